//! Typed queries on `capture_files`: the capture engine's per-file progress, written in the same
//! transaction as the traces built from the file, so a scan that dies half-way neither loses
//! nor repeats a turn.

use rusqlite::{params, OptionalExtension, Row};

use super::traces::upsert_trace_row;
use super::{Db, StoreResult, UpsertOutcome};
use crate::traces::Trace;

/// What the last scan of one transcript file saw.
#[derive(Debug, Clone, PartialEq)]
pub struct CaptureFileRow {
    pub path: String,
    pub session_id: Option<String>,
    pub agent_id: Option<String>,
    pub size: u64,
    pub mtime_ns: i64,
    pub head_len: u64,
    pub head_hash: String,
    pub complete_offset: u64,
    pub last_line_start: u64,
    pub last_line_hash: Option<String>,
    pub last_uuid: Option<String>,
    pub n_traces: i64,
    pub malformed_lines: i64,
    pub scanned_at: String,
}

/// One Claude Code session as its captured traces show it (subagent traces count with their
/// parent session).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CaptureSession {
    pub session_id: String,
    pub project: String,
    /// The git branch of the session's latest trace.
    pub git_branch: String,
    /// The latest trace's start.
    pub last_at: String,
    pub n_traces: i64,
}

const COLUMNS: &str = "path, session_id, agent_id, size, mtime_ns, head_len, head_hash, complete_offset,
    last_line_start, last_line_hash, last_uuid, n_traces, malformed_lines, scanned_at";

fn from_row(row: &Row<'_>) -> rusqlite::Result<CaptureFileRow> {
    Ok(CaptureFileRow {
        path: row.get(0)?,
        session_id: row.get(1)?,
        agent_id: row.get(2)?,
        size: row.get::<_, i64>(3)? as u64,
        mtime_ns: row.get(4)?,
        head_len: row.get::<_, i64>(5)? as u64,
        head_hash: row.get(6)?,
        complete_offset: row.get::<_, i64>(7)? as u64,
        last_line_start: row.get::<_, i64>(8)? as u64,
        last_line_hash: row.get(9)?,
        last_uuid: row.get(10)?,
        n_traces: row.get(11)?,
        malformed_lines: row.get(12)?,
        scanned_at: row.get(13)?,
    })
}

impl Db {
    pub fn capture_file(&self, path: &str) -> StoreResult<Option<CaptureFileRow>> {
        let sql = format!("SELECT {COLUMNS} FROM capture_files WHERE path = ?");
        Ok(self.conn.query_row(&sql, [path], from_row).optional()?)
    }

    /// Every tracked file, by path.
    pub fn capture_files(&self) -> StoreResult<Vec<CaptureFileRow>> {
        let sql = format!("SELECT {COLUMNS} FROM capture_files ORDER BY path");
        let mut statement = self.conn.prepare(&sql)?;
        let rows = statement.query_map([], from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Sessions with captured traces, most recent first.
    pub fn capture_sessions(&self, limit: i64) -> StoreResult<Vec<CaptureSession>> {
        // SQLite takes the bare columns from the row that holds MAX(created_at).
        let sql = "SELECT json_extract(body, '$.metadata.session_id') AS session,
                COALESCE(json_extract(body, '$.metadata.project'), ''),
                COALESCE(json_extract(body, '$.metadata.git_branch'), ''),
                MAX(created_at), COUNT(*)
             FROM traces WHERE source = 'claude_code' AND session IS NOT NULL
             GROUP BY session ORDER BY MAX(created_at) DESC, session LIMIT ?";
        let mut statement = self.conn.prepare(sql)?;
        let rows = statement.query_map([limit], |row| {
            Ok(CaptureSession {
                session_id: row.get(0)?,
                project: row.get(1)?,
                git_branch: row.get(2)?,
                last_at: row.get(3)?,
                n_traces: row.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Upsert the traces built from one file and record its progress, in one transaction.
    pub fn record_capture(&mut self, progress: &CaptureFileRow, traces: &[Trace]) -> StoreResult<Vec<UpsertOutcome>> {
        let now = crate::traces::now_rfc3339();
        let transaction = self.conn.transaction()?;
        let mut outcomes = Vec::with_capacity(traces.len());
        for trace in traces {
            outcomes.push(upsert_trace_row(&transaction, trace, &now)?);
        }
        let sql = format!(
            "INSERT OR REPLACE INTO capture_files ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        );
        transaction.execute(
            &sql,
            params![
                progress.path,
                progress.session_id,
                progress.agent_id,
                progress.size as i64,
                progress.mtime_ns,
                progress.head_len as i64,
                progress.head_hash,
                progress.complete_offset as i64,
                progress.last_line_start as i64,
                progress.last_line_hash,
                progress.last_uuid,
                progress.n_traces,
                progress.malformed_lines,
                progress.scanned_at,
            ],
        )?;
        transaction.commit()?;
        Ok(outcomes)
    }
}
