//! Typed queries on `jobs`, `job_metrics` and `job_logs`: the durable queue (insert, claim,
//! progress, finish), cancel and resume requests, crash recovery, metrics and logs.

use rusqlite::{params, Connection, OptionalExtension, Row};
use serde_json::Value;

use super::{Db, StoreError, StoreResult};
use crate::jobs::{JobId, JobKind, JobLog, JobMetric, JobOutput, JobParams, JobRecord, JobStatus};
use crate::traces::now_rfc3339;

const JOB_COLUMNS: &str = "id, kind, status, params, checkpoint, result, error, progress_done, progress_total,
     message, cancel_requested, owner_pid, created_at, started_at, finished_at";

/// Save a job's checkpoint inside the caller's transaction (a batch of imported records).
pub(super) fn write_checkpoint(conn: &Connection, job_id: &str, state: &str, now: &str) -> StoreResult<()> {
    conn.execute("UPDATE jobs SET checkpoint = ?, updated_at = ? WHERE id = ?", params![state, now, job_id])?;
    Ok(())
}

/// Insert a job row (queued, or running for `owner_pid`) on `conn`, which may be a transaction;
/// returns its id.
pub(super) fn insert_job_row(conn: &Connection, params: &JobParams, owner_pid: Option<u32>) -> StoreResult<String> {
    let id = JobId::new().0;
    let now = now_rfc3339();
    let (status, started_at) = match owner_pid {
        Some(_) => (JobStatus::Running, Some(now.clone())),
        None => (JobStatus::Queued, None),
    };
    conn.execute(
        "INSERT INTO jobs (id, kind, status, params, owner_pid, created_at, started_at, updated_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        params![
            id,
            params.kind().as_str(),
            status.as_str(),
            params.to_json().to_string(),
            owner_pid,
            now,
            started_at,
            now
        ],
    )?;
    Ok(id)
}

fn job_from_row(row: &Row<'_>) -> rusqlite::Result<JobRecord> {
    let json = |index: usize| -> rusqlite::Result<Option<Value>> {
        let text: Option<String> = row.get(index)?;
        Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
    };
    let unreadable = |index: usize, reason: String| {
        rusqlite::Error::FromSqlConversionFailure(index, rusqlite::types::Type::Text, reason.into())
    };
    let id: String = row.get(0)?;
    let kind_text: String = row.get(1)?;
    let kind =
        JobKind::parse(&kind_text).ok_or_else(|| unreadable(1, format!("job {id}: unknown kind {kind_text:?}")))?;
    let status: String = row.get(2)?;
    let params = JobParams::from_json(kind, json(3)?.unwrap_or(Value::Null))
        .map_err(|e| unreadable(3, format!("job {id}: {kind} parameters: {e}")))?;
    let result = json(5)?
        .map(|value| JobOutput::from_json(kind, value))
        .transpose()
        .map_err(|e| unreadable(5, format!("job {id}: {kind} result: {e}")))?;
    Ok(JobRecord {
        id: JobId(id),
        kind,
        status: JobStatus::parse(&status).unwrap_or(JobStatus::Failed),
        params,
        checkpoint: json(4)?,
        result,
        error: row.get(6)?,
        progress_done: row.get(7)?,
        progress_total: row.get(8)?,
        message: row.get(9)?,
        cancel_requested: row.get::<_, i64>(10)? != 0,
        owner_pid: row.get(11)?,
        created_at: row.get(12)?,
        started_at: row.get(13)?,
        finished_at: row.get(14)?,
    })
}

impl Db {
    /// Add a job; `owner_pid` set means the caller runs it now in the foreground.
    pub fn insert_job(&self, params: &JobParams, owner_pid: Option<u32>) -> StoreResult<JobRecord> {
        let id = insert_job_row(&self.conn, params, owner_pid)?;
        self.get_job(&id)?.ok_or_else(|| StoreError::Corrupt { id, reason: "vanished after insert".into() })
    }

    /// Take the oldest queued job for this process, atomically.
    pub fn claim_next_job(&self, owner_pid: u32) -> StoreResult<Option<JobRecord>> {
        let now = now_rfc3339();
        let id: Option<String> = self
            .conn
            .query_row(
                "UPDATE jobs SET status = 'running', owner_pid = ?1, started_at = COALESCE(started_at, ?2),
                    updated_at = ?2, error = NULL
                 WHERE id = (SELECT id FROM jobs WHERE status = 'queued' ORDER BY created_at, id LIMIT 1)
                   AND status = 'queued'
                 RETURNING id",
                params![owner_pid, now],
                |row| row.get(0),
            )
            .optional()?;
        id.map(|id| self.get_job(&id)).transpose().map(Option::flatten)
    }

    pub fn get_job(&self, id: &str) -> StoreResult<Option<JobRecord>> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?");
        Ok(self.conn.query_row(&sql, [id], job_from_row).optional()?)
    }

    /// Newest first.
    pub fn list_jobs(&self, limit: i64) -> StoreResult<Vec<JobRecord>> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs ORDER BY created_at DESC, id DESC LIMIT ?");
        let mut statement = self.conn.prepare(&sql)?;
        let rows = statement.query_map([limit], job_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn count_jobs_by_status(&self) -> StoreResult<Vec<(String, i64)>> {
        let mut statement = self.conn.prepare("SELECT status, COUNT(*) FROM jobs GROUP BY status ORDER BY status")?;
        let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn update_job_progress(&self, id: &str, done: i64, total: Option<i64>, message: &str) -> StoreResult<()> {
        self.conn.execute(
            "UPDATE jobs SET progress_done = ?, progress_total = ?, message = ?, updated_at = ? WHERE id = ?",
            params![done, total, message, now_rfc3339(), id],
        )?;
        Ok(())
    }

    pub fn save_job_checkpoint(&self, id: &str, checkpoint: &Value) -> StoreResult<()> {
        self.conn.execute(
            "UPDATE jobs SET checkpoint = ?, updated_at = ? WHERE id = ?",
            params![checkpoint.to_string(), now_rfc3339(), id],
        )?;
        Ok(())
    }

    /// Record the end of a run. Only a running job can finish.
    pub fn finish_job(
        &self,
        id: &str,
        status: JobStatus,
        result: Option<&JobOutput>,
        error: Option<&str>,
    ) -> StoreResult<()> {
        let now = now_rfc3339();
        self.conn.execute(
            "UPDATE jobs SET status = ?, result = COALESCE(?, result), error = ?, finished_at = ?, updated_at = ?,
                owner_pid = NULL
             WHERE id = ? AND status = 'running'",
            params![status.as_str(), result.map(|r| r.to_json().to_string()), error, now, now, id],
        )?;
        Ok(())
    }

    /// Ask a job to stop: a queued job is cancelled at once, a running one at its next check.
    pub fn request_cancel(&self, id: &str) -> StoreResult<Option<JobRecord>> {
        let now = now_rfc3339();
        self.conn.execute(
            "UPDATE jobs SET status = 'cancelled', finished_at = ?1, updated_at = ?1, message = 'cancelled before it started'
             WHERE id = ?2 AND status = 'queued'",
            params![now, id],
        )?;
        self.conn.execute(
            "UPDATE jobs SET cancel_requested = 1, updated_at = ?1 WHERE id = ?2 AND status = 'running'",
            params![now, id],
        )?;
        self.get_job(id)
    }

    pub fn is_cancel_requested(&self, id: &str) -> StoreResult<bool> {
        let flag: Option<i64> =
            self.conn.query_row("SELECT cancel_requested FROM jobs WHERE id = ?", [id], |row| row.get(0)).optional()?;
        Ok(flag.unwrap_or(1) != 0)
    }

    /// Put a stopped job back in the queue; its checkpoint is kept so it continues, not restarts.
    pub fn requeue_job(&self, id: &str) -> StoreResult<Option<JobRecord>> {
        self.conn.execute(
            "UPDATE jobs SET status = 'queued', cancel_requested = 0, finished_at = NULL, error = NULL,
                owner_pid = NULL, updated_at = ?
             WHERE id = ? AND status IN ('interrupted', 'cancelled', 'failed')",
            params![now_rfc3339(), id],
        )?;
        self.get_job(id)
    }

    /// Take over a stopped job to run it in the foreground of this process.
    pub fn take_over_job(&self, id: &str, owner_pid: u32) -> StoreResult<bool> {
        let now = now_rfc3339();
        let changed = self.conn.execute(
            "UPDATE jobs SET status = 'running', cancel_requested = 0, finished_at = NULL, error = NULL,
                owner_pid = ?1, started_at = COALESCE(started_at, ?2), updated_at = ?2
             WHERE id = ?3 AND status IN ('queued', 'interrupted', 'cancelled', 'failed')",
            params![owner_pid, now, id],
        )?;
        Ok(changed == 1)
    }

    /// Mark jobs left `running` by a process that no longer exists as `interrupted`.
    pub fn mark_orphaned_jobs_interrupted(&self, is_alive: impl Fn(u32) -> bool) -> StoreResult<usize> {
        let mut statement = self.conn.prepare("SELECT id, owner_pid FROM jobs WHERE status = 'running'")?;
        let running: Vec<(String, Option<u32>)> =
            statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?.collect::<Result<_, _>>()?;
        let now = now_rfc3339();
        let mut marked = 0;
        for (id, pid) in running {
            if pid.is_some_and(&is_alive) {
                continue;
            }
            marked += self.conn.execute(
                "UPDATE jobs SET status = 'interrupted', owner_pid = NULL, updated_at = ?1,
                    message = 'interrupted: the process running it stopped'
                 WHERE id = ?2 AND status = 'running'",
                params![now, id],
            )?;
        }
        Ok(marked)
    }

    pub fn add_job_metric(&self, id: &str, step: i64, name: &str, value: f64) -> StoreResult<()> {
        self.conn.execute(
            "INSERT INTO job_metrics (job_id, step, name, value, recorded_at) VALUES (?, ?, ?, ?, ?)",
            params![id, step, name, value, now_rfc3339()],
        )?;
        Ok(())
    }

    pub fn job_metrics(&self, id: &str) -> StoreResult<Vec<JobMetric>> {
        let mut statement =
            self.conn.prepare("SELECT step, name, value FROM job_metrics WHERE job_id = ? ORDER BY name, step")?;
        let rows = statement
            .query_map([id], |row| Ok(JobMetric { step: row.get(0)?, name: row.get(1)?, value: row.get(2)? }))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn add_job_log(&self, id: &str, level: &str, message: &str) -> StoreResult<()> {
        self.conn.execute(
            "INSERT INTO job_logs (job_id, level, message, logged_at) VALUES (?, ?, ?, ?)",
            params![id, level, message, now_rfc3339()],
        )?;
        Ok(())
    }

    /// The last `limit` log lines, oldest first.
    pub fn job_logs(&self, id: &str, limit: i64) -> StoreResult<Vec<JobLog>> {
        let mut statement = self.conn.prepare(
            "SELECT level, message, logged_at FROM
               (SELECT id, level, message, logged_at FROM job_logs WHERE job_id = ? ORDER BY id DESC LIMIT ?)
             ORDER BY id",
        )?;
        let rows = statement.query_map(params![id, limit], |row| {
            Ok(JobLog { level: row.get(0)?, message: row.get(1)?, logged_at: row.get(2)? })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}
