//! A bounded JSONL line reader: yields each line with its 1-based number and end offset, never
//! holds more than the record limit of one line in memory, and classifies blank, over-long and
//! non-UTF-8 lines instead of failing the whole file.

use std::io::{self, BufRead};

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

#[cfg(test)]
mod tests {
    use super::*;

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
