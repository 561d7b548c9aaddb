//! The `import_dpo` job (spec 3.2): read a Command Center preference-pair file — JSONL in any of
//! the accepted shapes, or one JSON array (detected by a leading `[`) — store each good pair
//! with the SFT trace it yields (deduped by content hash), and report each rejected line (or
//! array element, by 1-based index) as `{"line", "reason"}`, also logged with the file's name.
//! Each batch commits together with the job checkpoint, so a cancelled or interrupted import
//! resumes exactly where it stopped.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Seek, SeekFrom};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::import_traces::{ImportReport, MAX_REPORTED_ERRORS};
use super::{JobContext, JobError};
use crate::store::PairInsertOutcome;
use crate::traces::jsonl::{for_each_array_element, ArrayWalkError, JsonlReader, RawLine};
use crate::traces::preference::{pair_to_trace, parse_pair_line, parse_pair_value, PreferencePair};
use crate::traces::{Trace, MAX_RECORD_BYTES};

const BATCH_RECORDS: usize = 256;
const BATCH_BYTES: usize = 16 * 1024 * 1024;
const UTF8_BOM: [u8; 3] = [0xEF, 0xBB, 0xBF];

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImportDpoParams {
    pub path: PathBuf,
    /// The name the user knows the file by (as given on the command line, or an upload's name).
    #[serde(default)]
    pub display_name: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Checkpoint {
    /// JSONL: where the next line starts. Array: how far the walk got (progress only).
    offset: u64,
    /// JSONL: lines read. Array: elements read.
    lines: usize,
    file_bytes: u64,
    report: ImportReport,
    /// Pairs whose SFT trace was new (the rest reuse a stored trace with the same content).
    #[serde(default)]
    new_traces: usize,
}

/// How the file holds its records.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Layout {
    Lines,
    /// One JSON array starting at this byte (after a byte-order mark, if any).
    Array {
        start: u64,
    },
}

pub fn run(context: &mut JobContext<'_>, params: &ImportDpoParams) -> Result<ImportReport, JobError> {
    let shown = params.display_name.clone().unwrap_or_else(|| params.path.display().to_string());
    let cannot_read = |e: &dyn std::fmt::Display| JobError::Failed(format!("cannot read {shown}: {e}"));
    let mut file = File::open(&params.path).map_err(|e| cannot_read(&e))?;
    let metadata = file.metadata().map_err(|e| cannot_read(&e))?;
    if metadata.is_dir() {
        return Err(cannot_read(&"it is a directory"));
    }
    let file_bytes = metadata.len();
    let layout = detect_layout(&mut file).map_err(|e| cannot_read(&e))?;

    let mut checkpoint: Checkpoint = context
        .job()
        .checkpoint
        .clone()
        .and_then(|value| serde_json::from_value(value).ok())
        .filter(|c: &Checkpoint| c.file_bytes <= file_bytes && c.offset <= file_bytes)
        .unwrap_or_default();
    checkpoint.file_bytes = file_bytes;
    let array = matches!(layout, Layout::Array { .. });
    let unit = if array { "element" } else { "line" };
    if checkpoint.lines > 0 {
        context.log("info", &format!("resuming {shown} at {unit} {}", checkpoint.lines + 1))?;
    } else {
        let shape = match layout {
            Layout::Lines => "JSONL",
            Layout::Array { .. } => "one JSON array",
        };
        context.log("info", &format!("importing preference pairs from {shown} ({shape})"))?;
    }

    let mut import =
        PairImport { shown, array, file_bytes, checkpoint, lines: Vec::new(), items: Vec::new(), batch_bytes: 0 };
    match layout {
        Layout::Lines => import.read_lines(context, file)?,
        Layout::Array { start } => import.read_array(context, file, start)?,
    }
    import.commit(context)?;
    import.checkpoint.report.errors.sort_by_key(|error| error.line);
    let checkpoint = &import.checkpoint;
    context.progress(checkpoint.offset, Some(file_bytes), &progress_message(checkpoint), true)?;
    let report = &checkpoint.report;
    if report.imported + report.duplicates + report.rejected == 0 {
        context.log("warn", &format!("{} holds no records to import", import.shown))?;
    }
    context.log(
        "info",
        &format!(
            "done: {} imported ({} new SFT traces), {} duplicates, {} rejected",
            report.imported, checkpoint.new_traces, report.duplicates, report.rejected
        ),
    )?;
    Ok(report.clone())
}

/// A file whose first non-space byte is `[` is one JSON array; anything else is JSONL.
fn detect_layout(file: &mut File) -> io::Result<Layout> {
    let mut reader = BufReader::new(&mut *file);
    let mut start = 0u64;
    let mut at_start = true;
    let layout = loop {
        let buffer = reader.fill_buf()?;
        if buffer.is_empty() {
            break Layout::Lines;
        }
        let mut skip = 0;
        if at_start && buffer.starts_with(&UTF8_BOM) {
            skip = UTF8_BOM.len();
            start = skip as u64;
        }
        at_start = false;
        match buffer[skip..].iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'[') => break Layout::Array { start },
            Some(_) => break Layout::Lines,
            None => {
                let consumed = buffer.len();
                reader.consume(consumed);
            }
        }
    };
    drop(reader);
    file.seek(SeekFrom::Start(0))?;
    Ok(layout)
}

fn progress_message(checkpoint: &Checkpoint) -> String {
    let report = &checkpoint.report;
    format!(
        "{} records: {} imported, {} duplicates, {} rejected",
        checkpoint.lines, report.imported, report.duplicates, report.rejected
    )
}

/// The state of one import run: the checkpoint and the batch waiting to be committed.
struct PairImport {
    shown: String,
    /// Records are array elements, not lines.
    array: bool,
    file_bytes: u64,
    checkpoint: Checkpoint,
    lines: Vec<usize>,
    items: Vec<(PreferencePair, Trace)>,
    batch_bytes: usize,
}

impl PairImport {
    fn read_lines(&mut self, context: &mut JobContext<'_>, file: File) -> Result<(), JobError> {
        let mut reader = BufReader::with_capacity(1 << 20, file);
        reader
            .seek(SeekFrom::Start(self.checkpoint.offset))
            .map_err(|e| JobError::Failed(format!("cannot read {}: {e}", self.shown)))?;
        let lines = JsonlReader::resume(reader, MAX_RECORD_BYTES, self.checkpoint.offset, self.checkpoint.lines);
        for item in lines {
            let item = item.map_err(|e| {
                JobError::Failed(format!("cannot read {} after line {}: {e}", self.shown, self.checkpoint.lines))
            })?;
            self.checkpoint.lines = item.line;
            self.checkpoint.offset = item.end_offset;
            match item.raw {
                RawLine::Blank => {}
                RawLine::TooLong { bytes } => self.reject(
                    context,
                    item.line,
                    format!("record is {bytes} bytes, over the {MAX_RECORD_BYTES}-byte limit per line"),
                )?,
                RawLine::BadUtf8 { valid_up_to } => {
                    self.reject(context, item.line, format!("invalid UTF-8 at byte {} of the line", valid_up_to + 1))?
                }
                RawLine::Text(text) => self.record(context, item.line, text.len(), parse_pair_line(&text))?,
            }
        }
        Ok(())
    }

    fn read_array(&mut self, context: &mut JobContext<'_>, mut file: File, start: u64) -> Result<(), JobError> {
        file.seek(SeekFrom::Start(start)).map_err(|e| JobError::Failed(format!("cannot read {}: {e}", self.shown)))?;
        let reader = BufReader::with_capacity(1 << 20, file);
        let walk = for_each_array_element(reader, self.checkpoint.lines, |element| {
            self.checkpoint.lines = element.index;
            self.checkpoint.offset = start + element.end_offset;
            if element.bytes > MAX_RECORD_BYTES as u64 {
                let reason = format!(
                    "record is about {} bytes, over the {MAX_RECORD_BYTES}-byte limit per element",
                    element.bytes
                );
                return self.reject(context, element.index, reason);
            }
            self.record(context, element.index, element.bytes as usize, parse_pair_value(element.value))
        });
        match walk {
            Ok(_) => {
                self.checkpoint.offset = self.file_bytes;
                Ok(())
            }
            Err(ArrayWalkError::Visit(error)) => Err(error),
            Err(ArrayWalkError::Json { element, error }) => {
                if error.is_io() {
                    return Err(JobError::Failed(format!("cannot read {}: {error}", self.shown)));
                }
                self.checkpoint.lines = self.checkpoint.lines.max(element);
                self.checkpoint.offset = self.file_bytes;
                self.reject(context, element, format!("invalid JSON: {error}; the rest of the file could not be read"))
            }
        }
    }

    /// One parsed record: into the batch with its SFT trace, or rejected with the reason.
    fn record(
        &mut self,
        context: &mut JobContext<'_>,
        line: usize,
        bytes: usize,
        parsed: Result<PreferencePair, String>,
    ) -> Result<(), JobError> {
        let with_trace = parsed.and_then(|pair| match pair_to_trace(&pair) {
            Ok(trace) => Ok((pair, trace)),
            Err(error) => Err(format!("cannot become an SFT trace: {error}")),
        });
        match with_trace {
            Ok(item) => {
                self.batch_bytes += bytes;
                self.lines.push(line);
                self.items.push(item);
            }
            Err(reason) => self.reject(context, line, reason)?,
        }
        if self.items.len() >= BATCH_RECORDS || self.batch_bytes >= BATCH_BYTES {
            self.commit(context)?;
            let checkpoint = &self.checkpoint;
            context.progress(checkpoint.offset, Some(self.file_bytes), &progress_message(checkpoint), false)?;
            context.check_cancelled()?;
        }
        Ok(())
    }

    /// `file:line` for JSONL, `file element N` for an array.
    fn locate(&self, line: usize) -> String {
        if self.array {
            format!("{} element {line}", self.shown)
        } else {
            format!("{}:{line}", self.shown)
        }
    }

    fn reject(&mut self, context: &mut JobContext<'_>, line: usize, reason: String) -> Result<(), JobError> {
        if self.checkpoint.report.rejected < MAX_REPORTED_ERRORS {
            context.log("warn", &format!("{}: {reason}", self.locate(line)))?;
        }
        self.checkpoint.report.reject(line, reason);
        Ok(())
    }

    /// Store the batch and the checkpoint that counts it, in one transaction.
    fn commit(&mut self, context: &mut JobContext<'_>) -> Result<(), JobError> {
        let job_id = context.job().id.clone();
        let mut updated = self.checkpoint.clone();
        let mut conflicts: Vec<(usize, String)> = Vec::new();
        let (lines, items) = (&self.lines, &self.items);
        context.db().insert_pairs(items, |outcomes| {
            for ((line, (pair, _)), outcome) in lines.iter().zip(items).zip(outcomes) {
                match outcome {
                    PairInsertOutcome::Inserted { new_trace } => {
                        updated.report.imported += 1;
                        updated.new_traces += usize::from(*new_trace);
                    }
                    PairInsertOutcome::Duplicate => updated.report.duplicates += 1,
                    PairInsertOutcome::IdConflict => {
                        let reason = format!("id: {:?} is already used by a different stored pair", pair.id);
                        updated.report.reject(*line, reason.clone());
                        conflicts.push((*line, reason));
                    }
                }
            }
            Some((job_id.to_string(), serde_json::to_string(&updated).expect("checkpoint serialises")))
        })?;
        self.lines.clear();
        self.items.clear();
        self.batch_bytes = 0;
        self.checkpoint = updated;
        for (line, reason) in conflicts {
            context.log("warn", &format!("{}: {reason}", self.locate(line)))?;
        }
        Ok(())
    }
}
