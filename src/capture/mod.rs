//! The capture engine (spec 3.3): Claude Code session transcripts under
//! `<root>/projects/<project>/` become `source: claude_code` traces, one per human prompt.
//!
//! `transcript` reads a file line by line into slim records; `conversation` rebuilds the active
//! branch and cuts it into turns; this module redacts each turn (`redact`) and validates it into
//! a `Trace` with a stable id; `scan` finds the files, tracks per-file progress in the store and
//! upserts the traces; `hook` edits Claude Code's settings for the `SessionEnd` hook; `engine`
//! reads the background watcher's files into its status. Nothing here
//! reads the environment: the CLI resolves the root and the settings path.
//!
//! Reasoning (`thinking` blocks) has no field in the trace model, so it is kept in
//! `metadata.reasoning` as `[{"message": <index of the assistant message>, "text": ...}]`.

pub mod bench;
pub mod conversation;
pub mod hook;
pub mod redact;
pub mod scan;
pub mod transcript;
pub mod watcher;

use std::path::PathBuf;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::traces::tools::tool_schema;
use crate::traces::{Source, Split, Trace, TraceDraft, ValidationError};
use conversation::Turn;
pub use redact::{RedactionCounts, RedactionPattern, Redactor};
pub use scan::{scan, scan_files, ScanReport};

/// Default cap on one tool result's text.
pub const DEFAULT_MAX_TOOL_RESULT_BYTES: usize = 32 * 1024;
/// Lines longer than this (base64 media) are skipped and counted as malformed.
pub const DEFAULT_MAX_LINE_BYTES: usize = 64 * 1024 * 1024;

/// What a scan reads and how it treats what it reads.
#[derive(Debug, Clone)]
pub struct CaptureSettings {
    /// Claude Code config roots (`~/.claude`, `$CLAUDE_CONFIG_DIR`); each holds `projects/`.
    pub roots: Vec<PathBuf>,
    pub max_tool_result_bytes: usize,
    pub max_line_bytes: usize,
    pub redactor: Redactor,
}

impl CaptureSettings {
    pub fn new(roots: Vec<PathBuf>) -> CaptureSettings {
        CaptureSettings {
            roots,
            max_tool_result_bytes: DEFAULT_MAX_TOOL_RESULT_BYTES,
            max_line_bytes: DEFAULT_MAX_LINE_BYTES,
            redactor: Redactor::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("no Claude Code projects directory under {}", .0.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    NoProjects(Vec<PathBuf>),
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// The stable id of a captured turn: the same session, agent and prompt record always give it.
pub fn trace_id(key: &str) -> String {
    let digest = hex::encode(Sha256::digest(key.as_bytes()));
    format!("tr_cc_{}", &digest[..24])
}

/// A schema for a tool Understudy does not know: any arguments.
fn permissive_schema(name: &str) -> Value {
    json!({"type": "function", "function": {
        "name": name,
        "description": format!("{name} (a tool seen in a Claude Code session; its schema is unknown)"),
        "parameters": {"type": "object", "additionalProperties": true}}})
}

/// Redact a turn and validate it into a trace. `counts` gains the redactions made.
pub fn turn_to_trace(turn: Turn, redactor: &Redactor, counts: &mut RedactionCounts) -> Result<Trace, ValidationError> {
    let mut messages = turn.messages;
    redactor.redact_messages(&mut messages, counts);
    // The prompt is the first message's text: redact it once and reuse it.
    let prompt = messages.first().and_then(|m| m.content.clone()).unwrap_or_else(|| turn.prompt.clone());
    let mut metadata = Value::Object(turn.metadata);
    redactor.redact_value(&mut metadata, &mut *counts);
    let Value::Object(metadata) = metadata else { unreachable!("an object stays an object") };

    let mut tool_names: Vec<&str> = Vec::new();
    for call in messages.iter().flat_map(|m| m.tool_calls.iter()) {
        if !tool_names.contains(&call.name.as_str()) {
            tool_names.push(call.name.as_str());
        }
    }
    let tools = tool_names.iter().map(|name| tool_schema(name).unwrap_or_else(|| permissive_schema(name))).collect();
    let id = trace_id(&turn.key);
    let created_at = turn.created_at.filter(|t| chrono::DateTime::parse_from_rfc3339(t).is_ok());
    Trace::new(TraceDraft {
        split: Some(Split::from_hash(&hex::encode(Sha256::digest(id.as_bytes())))),
        id: Some(id),
        source: Some(Source::ClaudeCode),
        category: None,
        prompt: Some(prompt),
        messages,
        tools,
        outcome: None,
        metadata,
        created_at,
    })
}
