//! One scan pass: find the transcripts under each root (main session files, subagent files in
//! both layouts, `agent-acompact-*` skipped), decide per file from its stored progress whether
//! it is unchanged (skipped), grown (its append checked against the stored head and last line)
//! or new/rewritten/truncated (read from the start), build its traces and upsert them together
//! with the new progress. A grown file is parsed again from the start because a new record may
//! hang anywhere in the parent DAG (a `/rewind` forks from an old record); the stored offset
//! decides which malformed lines are new, and upserts by stable id keep the store idempotent.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::conversation::{self, FileInfo};
use super::transcript::{self, ReadContext};
use super::{turn_to_trace, CaptureError, CaptureSettings, RedactionCounts};
use crate::store::{CaptureFileRow, Store, UpsertOutcome};

/// At most this many malformed lines and invalid turns are listed (all are counted).
const MAX_LISTED: usize = 1000;
const HEAD_BYTES: u64 = 1024;

/// A transcript found under a root.
#[derive(Debug, Clone)]
pub struct TranscriptFile {
    pub path: PathBuf,
    pub info: FileInfo,
    pub context: ReadContext,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ListedLine {
    pub file: String,
    pub line: usize,
    pub reason: String,
}

/// What one scan did. The first six fields are the summary the CLI prints.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScanReport {
    pub files: u64,
    pub sessions: u64,
    pub traces_new: u64,
    pub traces_updated: u64,
    pub malformed_lines: u64,
    pub redactions: u64,
    pub files_unchanged: u64,
    pub files_resumed: u64,
    pub files_reread: u64,
    pub traces_unchanged: u64,
    /// Turns whose content another stored trace already has (a history copied by `--resume`).
    pub traces_duplicate: u64,
    /// Prompts without an assistant reply yet.
    pub turns_pending: u64,
    pub turns_invalid: u64,
    pub redactions_by_pattern: BTreeMap<String, u64>,
    pub malformed: Vec<ListedLine>,
    pub invalid: Vec<ListedLine>,
    /// Files that could not be read this time (they are retried next scan).
    pub unreadable: Vec<ListedLine>,
}

/// Scan every transcript under the settings' roots.
pub fn scan(store: &Store, settings: &CaptureSettings) -> Result<ScanReport, CaptureError> {
    let files = discover(settings)?;
    scan_files(store, settings, &files)
}

/// Scan the given transcripts (a hook names one session's files).
pub fn scan_files(
    store: &Store,
    settings: &CaptureSettings,
    files: &[TranscriptFile],
) -> Result<ScanReport, CaptureError> {
    let mut db = store.connect()?;
    let mut report = ScanReport::default();
    let mut sessions: BTreeSet<String> = BTreeSet::new();
    for file in files {
        report.files += 1;
        let path_key = file.path.display().to_string();
        let previous = db.capture_file(&path_key)?;
        match scan_one(&mut db, settings, file, &path_key, previous.as_ref(), &mut report) {
            Ok(session) => {
                if let Some(session) = session {
                    sessions.insert(session);
                }
            }
            Err(ScanOneError::Io(e)) => {
                if let Some(session) = previous.and_then(|p| p.session_id).or(file.info.session_id.clone()) {
                    sessions.insert(session);
                }
                if report.unreadable.len() < MAX_LISTED {
                    report.unreadable.push(ListedLine {
                        file: file.info.relative_path.clone(),
                        line: 0,
                        reason: e.to_string(),
                    });
                }
            }
            Err(ScanOneError::Store(e)) => return Err(e.into()),
        }
    }
    report.sessions = sessions.len() as u64;
    Ok(report)
}

enum ScanOneError {
    Io(std::io::Error),
    Store(crate::store::StoreError),
}

impl From<std::io::Error> for ScanOneError {
    fn from(e: std::io::Error) -> Self {
        ScanOneError::Io(e)
    }
}

impl From<crate::store::StoreError> for ScanOneError {
    fn from(e: crate::store::StoreError) -> Self {
        ScanOneError::Store(e)
    }
}

/// How a file changed since the last scan.
#[derive(Debug, PartialEq)]
enum Change {
    Unchanged,
    /// Appended to: lines before this offset were read before.
    Grown(u64),
    /// New, rewritten or truncated: everything is read as new.
    Fresh {
        known: bool,
    },
}

fn classify(path: &Path, size: u64, mtime_ns: i64, previous: Option<&CaptureFileRow>) -> std::io::Result<Change> {
    let Some(previous) = previous else { return Ok(Change::Fresh { known: false }) };
    if size < previous.complete_offset {
        return Ok(Change::Fresh { known: true });
    }
    let (head_len, head_hash) = transcript::head_hash(path, previous.head_len)?;
    if head_len != previous.head_len || head_hash != previous.head_hash {
        return Ok(Change::Fresh { known: true });
    }
    if let Some(last_hash) = &previous.last_line_hash {
        let now = transcript::range_hash(path, previous.last_line_start, previous.complete_offset)?;
        if now.as_deref() != Some(last_hash.as_str()) {
            return Ok(Change::Fresh { known: true });
        }
    }
    if size == previous.size && mtime_ns == previous.mtime_ns {
        return Ok(Change::Unchanged);
    }
    Ok(Change::Grown(previous.complete_offset))
}

fn scan_one(
    db: &mut crate::store::Db,
    settings: &CaptureSettings,
    file: &TranscriptFile,
    path_key: &str,
    previous: Option<&CaptureFileRow>,
    report: &mut ScanReport,
) -> Result<Option<String>, ScanOneError> {
    let metadata = std::fs::metadata(&file.path)?;
    let mtime_ns = metadata
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as i64);
    let change = classify(&file.path, metadata.len(), mtime_ns, previous)?;
    let seen_before = match change {
        Change::Unchanged => {
            report.files_unchanged += 1;
            return Ok(previous.and_then(|p| p.session_id.clone()).or(file.info.session_id.clone()));
        }
        Change::Grown(offset) => {
            report.files_resumed += 1;
            offset
        }
        Change::Fresh { known } => {
            if known {
                report.files_reread += 1;
            }
            0
        }
    };

    let read = transcript::read_file(&file.path, &file.context)?;
    for malformed in read.malformed.iter().filter(|m| m.end_offset > seen_before) {
        report.malformed_lines += 1;
        if report.malformed.len() < MAX_LISTED {
            report.malformed.push(ListedLine {
                file: file.info.relative_path.clone(),
                line: malformed.line,
                reason: malformed.reason.clone(),
            });
        }
    }
    let built = conversation::build(&file.info, &read.records);
    report.turns_pending += built.pending_turns as u64;
    let mut traces = Vec::with_capacity(built.turns.len());
    let mut redactions = Vec::with_capacity(built.turns.len());
    for turn in built.turns {
        let line = turn.line;
        let mut counts = RedactionCounts::default();
        match turn_to_trace(turn, &settings.redactor, &mut counts) {
            Ok(trace) => {
                traces.push(trace);
                redactions.push(counts);
            }
            Err(error) => {
                report.turns_invalid += 1;
                if report.invalid.len() < MAX_LISTED {
                    report.invalid.push(ListedLine {
                        file: file.info.relative_path.clone(),
                        line,
                        reason: error.to_string(),
                    });
                }
            }
        }
    }

    let (head_len, head_hash) = transcript::head_hash(&file.path, HEAD_BYTES.min(read.complete_offset))?;
    let progress = CaptureFileRow {
        path: path_key.to_string(),
        session_id: built.session_id.clone(),
        agent_id: file.info.agent_id.clone(),
        size: read.complete_offset + read.pending_bytes,
        mtime_ns,
        head_len,
        head_hash,
        complete_offset: read.complete_offset,
        last_line_start: read.last_line_start,
        last_line_hash: read.last_line_hash.clone(),
        last_uuid: read.last_uuid.clone(),
        n_traces: traces.len() as i64,
        malformed_lines: read.malformed.len() as i64,
        scanned_at: crate::traces::now_rfc3339(),
    };
    let outcomes = db.record_capture(&progress, &traces)?;
    let mut written = RedactionCounts::default();
    for (outcome, counts) in outcomes.iter().zip(&redactions) {
        match outcome {
            UpsertOutcome::Inserted => report.traces_new += 1,
            UpsertOutcome::Updated => report.traces_updated += 1,
            UpsertOutcome::Unchanged => report.traces_unchanged += 1,
            UpsertOutcome::Duplicate => report.traces_duplicate += 1,
        }
        if matches!(outcome, UpsertOutcome::Inserted | UpsertOutcome::Updated) {
            written.add(counts);
        }
    }
    report.redactions += written.total();
    for (name, count) in written.0 {
        *report.redactions_by_pattern.entry(name).or_default() += count;
    }
    Ok(built.session_id)
}

/// Every transcript under the roots, sorted by path. A root may be a Claude config dir (holding
/// `projects/`) or a `projects` directory itself.
pub fn discover(settings: &CaptureSettings) -> Result<Vec<TranscriptFile>, CaptureError> {
    let mut found = Vec::new();
    let mut any_projects = false;
    for root in &settings.roots {
        let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.clone());
        let projects = if root.join("projects").is_dir() {
            root.join("projects")
        } else if root.file_name().is_some_and(|n| n == "projects") && root.is_dir() {
            root.clone()
        } else {
            continue;
        };
        any_projects = true;
        let base = projects.parent().unwrap_or(&projects).to_path_buf();
        for project in sorted_entries(&projects)? {
            if project.is_dir() {
                discover_project(&base, &project, settings, &mut found)?;
            }
        }
    }
    if !any_projects {
        return Err(CaptureError::NoProjects(settings.roots.clone()));
    }
    found.sort_by(|a, b| a.path.cmp(&b.path));
    found.dedup_by(|a, b| a.path == b.path);
    Ok(found)
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, CaptureError> {
    let entries = std::fs::read_dir(dir).map_err(|source| CaptureError::Io { path: dir.to_path_buf(), source })?;
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    Ok(paths)
}

fn is_jsonl(path: &Path) -> bool {
    path.is_file() && path.extension().is_some_and(|e| e == "jsonl")
}

/// The agent id of an `agent-<id>.jsonl` file; `None` for other names and for the internal
/// compaction agent (`agent-acompact-*`).
fn agent_id_of(path: &Path) -> Option<Option<String>> {
    let stem = path.file_stem()?.to_str()?;
    let id = stem.strip_prefix("agent-")?;
    if id.starts_with("acompact") {
        return Some(None);
    }
    Some(Some(id.to_string()))
}

fn discover_project(
    base: &Path,
    project: &Path,
    settings: &CaptureSettings,
    found: &mut Vec<TranscriptFile>,
) -> Result<(), CaptureError> {
    let project_name = project.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let make = |path: PathBuf, session_id: Option<String>, agent_id: Option<String>| {
        let session_dir = session_id.as_ref().map(|s| project.join(s));
        TranscriptFile {
            info: FileInfo {
                session_id,
                agent_id,
                project: project_name.clone(),
                relative_path: path.strip_prefix(base).unwrap_or(&path).display().to_string(),
            },
            context: ReadContext {
                project_dir: project.to_path_buf(),
                session_dir,
                max_tool_result_bytes: settings.max_tool_result_bytes,
                max_line_bytes: settings.max_line_bytes,
            },
            path,
        }
    };
    for entry in sorted_entries(project)? {
        if is_jsonl(&entry) {
            match agent_id_of(&entry) {
                // Older layout: the subagent file sits beside the sessions; its records name the session.
                Some(Some(agent_id)) => found.push(make(entry, None, Some(agent_id))),
                Some(None) => {}
                None => {
                    let session = entry.file_stem().map(|s| s.to_string_lossy().into_owned());
                    found.push(make(entry, session, None));
                }
            }
        } else if entry.is_dir() {
            let subagents = entry.join("subagents");
            if !subagents.is_dir() {
                continue;
            }
            let session = entry.file_name().map(|s| s.to_string_lossy().into_owned());
            for file in sorted_entries(&subagents)? {
                if !is_jsonl(&file) {
                    continue;
                }
                if let Some(Some(agent_id)) = agent_id_of(&file) {
                    found.push(make(file, session.clone(), Some(agent_id)));
                }
            }
        }
    }
    Ok(())
}
