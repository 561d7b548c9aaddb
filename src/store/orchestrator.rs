//! Typed queries on `settings`, `orchestrator_cycles` and `orchestrator_cycle_jobs`: stored
//! settings as JSON by key, the orchestrator's cycles (at most one running, enforced by a partial
//! unique index), and each cycle stage's job, created together with its link in one transaction.

use rusqlite::{params, OptionalExtension, Row};
use serde_json::Value;

use super::jobs::insert_job_row;
use super::{Db, StoreError, StoreResult};
use crate::jobs::{JobParams, JobRecord};
use crate::traces::now_rfc3339;

/// One stored cycle; `state` is the orchestrator's own JSON document.
#[derive(Debug, Clone)]
pub struct CycleRow {
    pub id: String,
    pub number: i64,
    pub status: String,
    pub stage: String,
    pub state: Value,
    pub error: Option<String>,
    pub started_at: String,
    pub updated_at: String,
    pub finished_at: Option<String>,
}

const CYCLE_COLUMNS: &str = "id, number, status, stage, state, error, started_at, updated_at, finished_at";

fn cycle_row(row: &Row<'_>) -> rusqlite::Result<CycleRow> {
    let state: String = row.get(4)?;
    Ok(CycleRow {
        id: row.get(0)?,
        number: row.get(1)?,
        status: row.get(2)?,
        stage: row.get(3)?,
        state: serde_json::from_str(&state)
            .map_err(|e| rusqlite::Error::FromSqlConversionFailure(4, rusqlite::types::Type::Text, e.into()))?,
        error: row.get(5)?,
        started_at: row.get(6)?,
        updated_at: row.get(7)?,
        finished_at: row.get(8)?,
    })
}

impl Db {
    pub fn get_setting(&self, key: &str) -> StoreResult<Option<Value>> {
        let text: Option<String> =
            self.conn.query_row("SELECT value FROM settings WHERE key = ?", [key], |row| row.get(0)).optional()?;
        text.map(|t| {
            serde_json::from_str(&t).map_err(|e| StoreError::Corrupt { id: key.into(), reason: e.to_string() })
        })
        .transpose()
    }

    pub fn put_setting(&self, key: &str, value: &Value) -> StoreResult<()> {
        self.conn.execute(
            "INSERT INTO settings (key, value, updated_at) VALUES (?1, ?2, ?3)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            params![key, value.to_string(), now_rfc3339()],
        )?;
        Ok(())
    }

    /// Start a cycle numbered after the last one, in `stage`. A conflict when one is running.
    pub fn insert_cycle(&mut self, stage: &str, state: &Value) -> StoreResult<CycleRow> {
        let tx = self.conn.transaction()?;
        let running: Option<String> = tx
            .query_row("SELECT id FROM orchestrator_cycles WHERE status = 'running'", [], |row| row.get(0))
            .optional()?;
        if let Some(id) = running {
            return Err(StoreError::Conflict(format!("cycle {id} is still running")));
        }
        let number: i64 =
            tx.query_row("SELECT COALESCE(MAX(number), 0) + 1 FROM orchestrator_cycles", [], |row| row.get(0))?;
        let id = format!("cy_{}", ulid::Ulid::new());
        let now = now_rfc3339();
        tx.execute(
            "INSERT INTO orchestrator_cycles (id, number, status, stage, state, started_at, updated_at)
             VALUES (?1, ?2, 'running', ?3, ?4, ?5, ?5)",
            params![id, number, stage, state.to_string(), now],
        )?;
        tx.commit()?;
        self.get_cycle(&id)?.ok_or_else(|| StoreError::Corrupt { id, reason: "vanished after insert".into() })
    }

    /// Save a cycle's stage, state and status; a status other than `running` finishes it.
    pub fn update_cycle(
        &self,
        id: &str,
        status: &str,
        stage: &str,
        state: &Value,
        error: Option<&str>,
    ) -> StoreResult<()> {
        let now = now_rfc3339();
        let finished = (status != "running").then_some(now.as_str());
        self.conn.execute(
            "UPDATE orchestrator_cycles SET status = ?1, stage = ?2, state = ?3, error = ?4, updated_at = ?5,
                finished_at = ?6
             WHERE id = ?7",
            params![status, stage, state.to_string(), error, now, finished, id],
        )?;
        Ok(())
    }

    pub fn get_cycle(&self, id: &str) -> StoreResult<Option<CycleRow>> {
        let sql = format!("SELECT {CYCLE_COLUMNS} FROM orchestrator_cycles WHERE id = ?");
        Ok(self.conn.query_row(&sql, [id], cycle_row).optional()?)
    }

    pub fn running_cycle(&self) -> StoreResult<Option<CycleRow>> {
        let sql = format!("SELECT {CYCLE_COLUMNS} FROM orchestrator_cycles WHERE status = 'running'");
        Ok(self.conn.query_row(&sql, [], cycle_row).optional()?)
    }

    /// The newest cycle that ended with `status`.
    pub fn last_cycle_with_status(&self, status: &str) -> StoreResult<Option<CycleRow>> {
        let sql =
            format!("SELECT {CYCLE_COLUMNS} FROM orchestrator_cycles WHERE status = ? ORDER BY number DESC LIMIT 1");
        Ok(self.conn.query_row(&sql, [status], cycle_row).optional()?)
    }

    /// How many cycles have each status.
    pub fn cycle_status_counts(&self) -> StoreResult<std::collections::HashMap<String, i64>> {
        let mut statement = self.conn.prepare("SELECT status, COUNT(*) FROM orchestrator_cycles GROUP BY status")?;
        let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?.collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// The newest `limit` cycles, newest first, each with its (stage, job id) links in the
    /// order the jobs were created: two queries, however many cycles.
    pub fn list_cycles_with_jobs(&self, limit: i64) -> StoreResult<Vec<(CycleRow, Vec<(String, String)>)>> {
        let cycles = self.list_cycles(limit)?;
        let Some(oldest) = cycles.last().map(|c| c.number) else { return Ok(Vec::new()) };
        let mut statement = self.conn.prepare(
            "SELECT c.cycle_id, c.stage, c.job_id FROM orchestrator_cycle_jobs c
             JOIN jobs j ON j.id = c.job_id JOIN orchestrator_cycles y ON y.id = c.cycle_id
             WHERE y.number >= ? ORDER BY j.created_at, j.id",
        )?;
        let links: Vec<(String, String, String)> = statement
            .query_map([oldest], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
            .collect::<Result<_, _>>()?;
        let mut grouped: std::collections::HashMap<String, Vec<(String, String)>> = std::collections::HashMap::new();
        for (cycle, stage, job) in links {
            grouped.entry(cycle).or_default().push((stage, job));
        }
        Ok(cycles
            .into_iter()
            .map(|c| {
                let jobs = grouped.remove(&c.id).unwrap_or_default();
                (c, jobs)
            })
            .collect())
    }

    /// Newest first.
    pub fn list_cycles(&self, limit: i64) -> StoreResult<Vec<CycleRow>> {
        let sql = format!("SELECT {CYCLE_COLUMNS} FROM orchestrator_cycles ORDER BY number DESC LIMIT ?");
        let mut statement = self.conn.prepare(&sql)?;
        let rows = statement.query_map([limit], cycle_row)?.collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Create the job of a cycle's stage and link it to the cycle in one transaction, so a
    /// stage never has two jobs. A conflict when the stage already has one.
    pub fn insert_cycle_job(
        &mut self,
        cycle_id: &str,
        stage: &str,
        params: &JobParams,
        owner_pid: Option<u32>,
    ) -> StoreResult<JobRecord> {
        let tx = self.conn.transaction()?;
        let existing: Option<String> = tx
            .query_row(
                "SELECT job_id FROM orchestrator_cycle_jobs WHERE cycle_id = ?1 AND stage = ?2",
                params![cycle_id, stage],
                |row| row.get(0),
            )
            .optional()?;
        if let Some(job) = existing {
            return Err(StoreError::Conflict(format!("cycle {cycle_id} already has job {job} for {stage}")));
        }
        let job_id = insert_job_row(&tx, params, owner_pid)?;
        tx.execute(
            "INSERT INTO orchestrator_cycle_jobs (cycle_id, stage, job_id) VALUES (?1, ?2, ?3)",
            params![cycle_id, stage, job_id],
        )?;
        tx.commit()?;
        self.get_job(&job_id)?.ok_or_else(|| StoreError::Corrupt { id: job_id, reason: "vanished after insert".into() })
    }

    /// The job of a cycle's stage, if it has one.
    pub fn cycle_job(&self, cycle_id: &str, stage: &str) -> StoreResult<Option<JobRecord>> {
        let job_id: Option<String> = self
            .conn
            .query_row(
                "SELECT job_id FROM orchestrator_cycle_jobs WHERE cycle_id = ?1 AND stage = ?2",
                params![cycle_id, stage],
                |row| row.get(0),
            )
            .optional()?;
        match job_id {
            Some(id) => self.get_job(&id),
            None => Ok(None),
        }
    }

    /// (stage, job id) of every job a cycle started, in creation order.
    pub fn cycle_jobs(&self, cycle_id: &str) -> StoreResult<Vec<(String, String)>> {
        let mut statement = self.conn.prepare(
            "SELECT c.stage, c.job_id FROM orchestrator_cycle_jobs c JOIN jobs j ON j.id = c.job_id
             WHERE c.cycle_id = ? ORDER BY j.created_at, j.id",
        )?;
        let rows = statement.query_map([cycle_id], |row| Ok((row.get(0)?, row.get(1)?)))?.collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Jobs of these kinds running now, other than `except`.
    pub fn running_jobs_of(&self, kinds: &[&str], except: Option<&str>) -> StoreResult<Vec<String>> {
        let mut statement = self.conn.prepare("SELECT id, kind FROM jobs WHERE status = 'running'")?;
        let rows: Vec<(String, String)> =
            statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?.collect::<Result<_, _>>()?;
        Ok(rows
            .into_iter()
            .filter(|(id, kind)| kinds.contains(&kind.as_str()) && Some(id.as_str()) != except)
            .map(|(id, _)| id)
            .collect())
    }
}
