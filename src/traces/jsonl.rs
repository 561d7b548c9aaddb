//! A bounded JSONL line reader: yields each line with its 1-based number and end offset, never
//! holds more than the record limit of one line in memory, and classifies blank, over-long and
//! non-UTF-8 lines instead of failing the whole file. Also a streaming walk over a file that
//! holds one JSON array (`for_each_array_element`), one element in memory at a time.

use std::cell::Cell;
use std::fmt;
use std::io::{self, BufRead, Read};
use std::rc::Rc;

use serde::de::{DeserializeSeed, Error as _, IgnoredAny, SeqAccess, Visitor};
use serde_json::Value;

#[derive(Debug, PartialEq)]
pub enum RawLine {
    Text(String),
    Blank,
    TooLong { bytes: usize },
    BadUtf8 { valid_up_to: usize },
}

#[derive(Debug)]
pub struct LineItem {
    /// 1-based line number in the file.
    pub line: usize,
    /// Byte offset just past this line's newline: where a resumed read starts.
    pub end_offset: u64,
    pub raw: RawLine,
}

pub struct JsonlReader<R> {
    inner: R,
    line: usize,
    offset: u64,
    max_bytes: usize,
    done: bool,
}

impl<R: BufRead> JsonlReader<R> {
    pub fn new(inner: R, max_bytes: usize) -> Self {
        Self::resume(inner, max_bytes, 0, 0)
    }

    /// Continue a read whose `inner` is already positioned at `offset`, after `lines_done` lines.
    pub fn resume(inner: R, max_bytes: usize, offset: u64, lines_done: usize) -> Self {
        JsonlReader { inner, line: lines_done, offset, max_bytes, done: false }
    }

    fn read_raw(&mut self) -> io::Result<Option<(Vec<u8>, usize)>> {
        let mut kept = Vec::new();
        let mut total = 0usize;
        let mut saw_any = false;
        loop {
            let buffer = self.inner.fill_buf()?;
            if buffer.is_empty() {
                return Ok(if saw_any { Some((kept, total)) } else { None });
            }
            saw_any = true;
            let (chunk, consumed, finished) = match buffer.iter().position(|&b| b == b'\n') {
                Some(newline) => (&buffer[..newline], newline + 1, true),
                None => (buffer, buffer.len(), false),
            };
            total += chunk.len();
            if kept.len() <= self.max_bytes {
                let room = self.max_bytes + 1 - kept.len();
                kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            self.inner.consume(consumed);
            self.offset += consumed as u64;
            if finished {
                return Ok(Some((kept, total)));
            }
        }
    }
}

impl<R: BufRead> Iterator for JsonlReader<R> {
    type Item = io::Result<LineItem>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let at_start = self.offset == 0;
        let (mut bytes, mut total) = match self.read_raw() {
            Ok(Some(read)) => read,
            Ok(None) => {
                self.done = true;
                return None;
            }
            Err(e) => {
                self.done = true;
                return Some(Err(e));
            }
        };
        self.line += 1;
        if at_start && bytes.starts_with(&[0xEF, 0xBB, 0xBF]) {
            bytes.drain(..3);
            total -= 3;
        }
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
            total -= 1;
        }
        let raw = if total > self.max_bytes {
            RawLine::TooLong { bytes: total }
        } else {
            match String::from_utf8(bytes) {
                Ok(text) if text.trim().is_empty() => RawLine::Blank,
                Ok(text) => RawLine::Text(text),
                Err(e) => RawLine::BadUtf8 { valid_up_to: e.utf8_error().valid_up_to() },
            }
        };
        Some(Ok(LineItem { line: self.line, end_offset: self.offset, raw }))
    }
}

/// What stopped a walk over a JSON array file.
#[derive(Debug)]
pub enum ArrayWalkError<E> {
    /// The text is not one well-formed JSON array; `element` is the 1-based element being read
    /// (one past the last element for data after the closing bracket).
    Json { element: usize, error: serde_json::Error },
    /// The visitor asked to stop.
    Visit(E),
}

/// One element of a JSON array file.
#[derive(Debug)]
pub struct ArrayElement {
    /// 1-based position in the array.
    pub index: usize,
    /// Byte offset (from where the reader started) just past the element.
    pub end_offset: u64,
    /// Bytes read for this element, separators included.
    pub bytes: u64,
    pub value: Value,
}

/// Visit each element of a file holding one JSON array, in order, without holding more than
/// one element in memory. The first `skip` elements are read over, not parsed into values, so
/// a resumed walk continues after them. Returns the number of elements.
pub fn for_each_array_element<R: Read, E>(
    reader: R,
    skip: usize,
    mut visit: impl FnMut(ArrayElement) -> Result<(), E>,
) -> Result<usize, ArrayWalkError<E>> {
    let position = Rc::new(Cell::new(0u64));
    let counting = CountingReader { inner: reader, position: Rc::clone(&position) };
    let mut deserializer = serde_json::Deserializer::from_reader(counting);
    let current = Cell::new(0usize);
    let mut failure: Option<E> = None;
    let walk = Elements { skip, visit: &mut visit, position: &position, current: &current, failure: &mut failure };
    let outcome = walk.deserialize(&mut deserializer);
    if let Some(stop) = failure {
        return Err(ArrayWalkError::Visit(stop));
    }
    let count = outcome.map_err(|error| ArrayWalkError::Json { element: current.get().max(1), error })?;
    deserializer.end().map_err(|error| ArrayWalkError::Json { element: count + 1, error })?;
    Ok(count)
}

struct CountingReader<R> {
    inner: R,
    position: Rc<Cell<u64>>,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buffer)?;
        self.position.set(self.position.get() + read as u64);
        Ok(read)
    }
}

struct Elements<'a, F, E> {
    skip: usize,
    visit: &'a mut F,
    position: &'a Cell<u64>,
    current: &'a Cell<usize>,
    failure: &'a mut Option<E>,
}

impl<'de, F, E> DeserializeSeed<'de> for Elements<'_, F, E>
where
    F: FnMut(ArrayElement) -> Result<(), E>,
{
    type Value = usize;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<usize, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de, F, E> Visitor<'de> for Elements<'_, F, E>
where
    F: FnMut(ArrayElement) -> Result<(), E>,
{
    type Value = usize;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a JSON array of records")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
        let mut count = 0usize;
        loop {
            self.current.set(count + 1);
            if count < self.skip {
                if seq.next_element::<IgnoredAny>()?.is_none() {
                    break;
                }
            } else {
                let before = self.position.get();
                let Some(value) = seq.next_element::<Value>()? else { break };
                let end_offset = self.position.get();
                let element = ArrayElement { index: count + 1, end_offset, bytes: end_offset - before, value };
                if let Err(stop) = (self.visit)(element) {
                    *self.failure = Some(stop);
                    return Err(A::Error::custom("stopped by the visitor"));
                }
            }
            count += 1;
        }
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walk(text: &str, skip: usize) -> (Vec<(usize, Value)>, Result<usize, ArrayWalkError<()>>) {
        let mut seen = Vec::new();
        let result = for_each_array_element(text.as_bytes(), skip, |element| {
            seen.push((element.index, element.value));
            Ok(())
        });
        (seen, result)
    }

    #[test]
    fn walks_array_elements_and_skips_on_resume() {
        let (seen, result) = walk(" [ {\"a\": 1}, 2 ,\n \"x\" ]\n", 0);
        assert_eq!(result.unwrap(), 3);
        assert_eq!(seen.iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(seen[0].1["a"], 1);
        let (seen, result) = walk("[1, 2, 3]", 2);
        assert_eq!(result.unwrap(), 3);
        assert_eq!(seen, vec![(3, Value::from(3))]);
    }

    #[test]
    fn a_broken_array_names_the_element_it_broke_in() {
        let (seen, result) = walk("[1, 2, {\"a\": ]", 0);
        assert_eq!(seen.len(), 2);
        match result {
            Err(ArrayWalkError::Json { element, .. }) => assert_eq!(element, 3),
            other => panic!("{other:?}"),
        }
        match walk("[1] [2]", 0).1 {
            Err(ArrayWalkError::Json { element, .. }) => assert_eq!(element, 2),
            other => panic!("{other:?}"),
        }
        let stopped =
            for_each_array_element(
                &b"[1, 2, 3]"[..],
                0,
                |element| if element.index == 2 { Err("stop") } else { Ok(()) },
            );
        assert!(matches!(stopped, Err(ArrayWalkError::Visit("stop"))));
    }

    #[test]
    fn classifies_lines_and_tracks_offsets() {
        let mut data = b"{\"a\":1}\n\n   \r\n".to_vec();
        data.extend_from_slice(&[b'x'; 20]);
        data.extend_from_slice(b"\n\xff\xfe\n{\"b\":2}");
        let items: Vec<LineItem> = JsonlReader::new(&data[..], 10).map(Result::unwrap).collect();
        let raws: Vec<&RawLine> = items.iter().map(|i| &i.raw).collect();
        assert_eq!(
            raws,
            vec![
                &RawLine::Text("{\"a\":1}".into()),
                &RawLine::Blank,
                &RawLine::Blank,
                &RawLine::TooLong { bytes: 20 },
                &RawLine::BadUtf8 { valid_up_to: 0 },
                &RawLine::Text("{\"b\":2}".into()),
            ]
        );
        assert_eq!(items.iter().map(|i| i.line).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(items[0].end_offset, 8);
        assert_eq!(items.last().unwrap().end_offset, data.len() as u64);
    }

    #[test]
    fn empty_input_yields_nothing() {
        assert_eq!(JsonlReader::new(&b""[..], 10).count(), 0);
    }
}
