//! The `import_traces` job: read a JSONL file of traces in one of the import formats, store the
//! good records (deduped by content hash) in batches, and report each rejected line as
//! `{"line", "reason"}`. Each batch commits together with the job checkpoint (byte offset, line,
//! counts), so a cancelled or interrupted import resumes exactly where it stopped.

use std::fs::File;
use std::io::{BufReader, Seek, SeekFrom};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{JobContext, JobError};
use crate::store::InsertOutcome;
use crate::traces::formats::{parse_record, ImportFormat};
use crate::traces::jsonl::{JsonlReader, RawLine};
use crate::traces::{Trace, MAX_RECORD_BYTES};

/// At most this many rejected lines are listed; `rejected` still counts them all.
pub const MAX_REPORTED_ERRORS: usize = 1000;
const BATCH_RECORDS: usize = 256;
const BATCH_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImportParams {
    pub path: PathBuf,
    pub format: ImportFormat,
    /// The name the user knows the file by (an upload's original name).
    #[serde(default)]
    pub display_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LineError {
    pub line: usize,
    pub reason: String,
}

/// The report of spec'd shape `{"imported", "duplicates", "rejected", "errors"}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImportReport {
    pub imported: usize,
    pub duplicates: usize,
    pub rejected: usize,
    pub errors: Vec<LineError>,
}

impl ImportReport {
    /// Count a rejected line; the first `MAX_REPORTED_ERRORS` are listed.
    pub fn reject(&mut self, line: usize, reason: String) {
        self.rejected += 1;
        if self.errors.len() < MAX_REPORTED_ERRORS {
            self.errors.push(LineError { line, reason });
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Checkpoint {
    offset: u64,
    lines: usize,
    file_bytes: u64,
    report: ImportReport,
}

pub fn run(context: &mut JobContext<'_>, params: &ImportParams) -> Result<ImportReport, JobError> {
    let shown = params.display_name.clone().unwrap_or_else(|| params.path.display().to_string());
    let file = File::open(&params.path).map_err(|e| JobError::Failed(format!("cannot read {shown}: {e}")))?;
    let metadata = file.metadata().map_err(|e| JobError::Failed(format!("cannot read {shown}: {e}")))?;
    if metadata.is_dir() {
        return Err(JobError::Failed(format!("cannot read {shown}: it is a directory")));
    }
    let file_bytes = metadata.len();

    let mut checkpoint: Checkpoint = context
        .job()
        .checkpoint
        .clone()
        .and_then(|value| serde_json::from_value(value).ok())
        .filter(|c: &Checkpoint| c.file_bytes <= file_bytes && c.offset <= file_bytes)
        .unwrap_or_default();
    checkpoint.file_bytes = file_bytes;
    if checkpoint.offset > 0 {
        context
            .log("info", &format!("resuming {shown} at line {} (byte {})", checkpoint.lines + 1, checkpoint.offset))?;
    } else {
        context.log("info", &format!("importing {shown} as {} traces", params.format))?;
    }
    let mut reader = BufReader::with_capacity(1 << 20, file);
    reader
        .seek(SeekFrom::Start(checkpoint.offset))
        .map_err(|e| JobError::Failed(format!("cannot read {shown}: {e}")))?;
    let lines = JsonlReader::resume(reader, MAX_RECORD_BYTES, checkpoint.offset, checkpoint.lines);

    let mut batch: Vec<(usize, Trace)> = Vec::new();
    let mut batch_bytes = 0usize;
    for item in lines {
        let item =
            item.map_err(|e| JobError::Failed(format!("cannot read {shown} after line {}: {e}", checkpoint.lines)))?;
        checkpoint.lines = item.line;
        checkpoint.offset = item.end_offset;
        match item.raw {
            RawLine::Blank => {}
            RawLine::TooLong { bytes } => checkpoint
                .report
                .reject(item.line, format!("record is {bytes} bytes, over the {MAX_RECORD_BYTES}-byte limit per line")),
            RawLine::BadUtf8 { valid_up_to } => {
                checkpoint.report.reject(item.line, format!("invalid UTF-8 at byte {} of the line", valid_up_to + 1))
            }
            RawLine::Text(text) => match parse_record(params.format, &text) {
                Ok(trace) => {
                    batch_bytes += text.len();
                    batch.push((item.line, trace));
                }
                Err(reason) => checkpoint.report.reject(item.line, reason),
            },
        }
        if batch.len() >= BATCH_RECORDS || batch_bytes >= BATCH_BYTES {
            commit_batch(context, &mut batch, &mut checkpoint)?;
            batch_bytes = 0;
            context.progress(checkpoint.offset, Some(file_bytes), &progress_message(&checkpoint), false)?;
            context.check_cancelled()?;
        }
    }
    commit_batch(context, &mut batch, &mut checkpoint)?;
    context.progress(checkpoint.offset, Some(file_bytes), &progress_message(&checkpoint), true)?;
    if checkpoint.lines == 0 {
        context.log("warn", &format!("{shown} is empty: no records to import"))?;
    }
    let report = &checkpoint.report;
    context.log(
        "info",
        &format!("done: {} imported, {} duplicates, {} rejected", report.imported, report.duplicates, report.rejected),
    )?;
    Ok(report.clone())
}

fn progress_message(checkpoint: &Checkpoint) -> String {
    let report = &checkpoint.report;
    format!(
        "line {}: {} imported, {} duplicates, {} rejected",
        checkpoint.lines, report.imported, report.duplicates, report.rejected
    )
}

fn commit_batch(
    context: &mut JobContext<'_>,
    batch: &mut Vec<(usize, Trace)>,
    checkpoint: &mut Checkpoint,
) -> Result<(), JobError> {
    let job_id = context.job().id.clone();
    let traces: Vec<Trace> = batch.iter().map(|(_, trace)| trace.clone()).collect();
    let mut updated = checkpoint.clone();
    // The checkpoint is written in the batch's own transaction, counting the batch's outcomes.
    context.db().insert_traces(&traces, |outcomes| {
        for ((line, trace), outcome) in batch.iter().zip(outcomes) {
            match outcome {
                InsertOutcome::Inserted => updated.report.imported += 1,
                InsertOutcome::Duplicate => updated.report.duplicates += 1,
                InsertOutcome::IdConflict => updated
                    .report
                    .reject(*line, format!("id: {:?} is already used by a different stored trace", trace.id)),
            }
        }
        Some((job_id.to_string(), serde_json::to_string(&updated).expect("checkpoint serialises")))
    })?;
    batch.clear();
    *checkpoint = updated;
    Ok(())
}
