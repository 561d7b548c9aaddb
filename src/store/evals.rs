//! Typed queries on `eval_suites`, `eval_runs` and `eval_cases`: imported suites, a run's
//! stored cases (each case committed with the job checkpoint, so a resumed run neither repeats
//! nor skips one) and its summary.

use rusqlite::{params, OptionalExtension, Row};
use serde_json::Value;

use super::{Db, StoreError, StoreResult};
use crate::traces::now_rfc3339;

#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct EvalSuiteRow {
    pub name: String,
    pub cases: usize,
    pub created_at: String,
}

#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct EvalRunRow {
    pub id: String,
    pub job_id: String,
    pub target: String,
    pub model_id: Option<String>,
    pub suites: Vec<String>,
    /// Overall and per-category metrics, once the run finished.
    #[schema(value_type = Option<Object>)]
    pub summary: Option<Value>,
    pub created_at: String,
    pub finished_at: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct EvalCaseRow {
    pub position: usize,
    pub case_id: String,
    pub suite: String,
    pub category: String,
    #[schema(value_type = Object)]
    pub score: Value,
    #[schema(value_type = Object)]
    pub episode: Value,
    /// The case as it was run (prompt, tools, criteria, reference).
    #[schema(value_type = Object)]
    pub case: Value,
}

fn json_column(row: &Row<'_>, index: usize) -> rusqlite::Result<Value> {
    let text: String = row.get(index)?;
    serde_json::from_str(&text)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(index, rusqlite::types::Type::Text, e.into()))
}

fn run_row(row: &Row<'_>) -> rusqlite::Result<EvalRunRow> {
    let suites: Value = json_column(row, 4)?;
    let summary: Option<String> = row.get(5)?;
    Ok(EvalRunRow {
        id: row.get(0)?,
        job_id: row.get(1)?,
        target: row.get(2)?,
        model_id: row.get(3)?,
        suites: serde_json::from_value(suites).unwrap_or_default(),
        summary: summary.and_then(|s| serde_json::from_str(&s).ok()),
        created_at: row.get(6)?,
        finished_at: row.get(7)?,
    })
}

const RUN_COLUMNS: &str = "id, job_id, target, model_id, suites, summary, created_at, finished_at";

impl Db {
    /// Add or replace an imported suite (its validated cases as JSONL).
    pub fn upsert_eval_suite(&self, name: &str, jsonl: &str, n_cases: usize) -> StoreResult<()> {
        self.conn.execute(
            "INSERT INTO eval_suites (name, cases, n_cases, created_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(name) DO UPDATE SET cases = excluded.cases, n_cases = excluded.n_cases,
                created_at = excluded.created_at",
            params![name, jsonl, n_cases as i64, now_rfc3339()],
        )?;
        Ok(())
    }

    /// An imported suite's JSONL.
    pub fn eval_suite(&self, name: &str) -> StoreResult<Option<String>> {
        Ok(self.conn.query_row("SELECT cases FROM eval_suites WHERE name = ?", [name], |r| r.get(0)).optional()?)
    }

    pub fn list_eval_suites(&self) -> StoreResult<Vec<EvalSuiteRow>> {
        let mut statement = self.conn.prepare("SELECT name, n_cases, created_at FROM eval_suites ORDER BY name")?;
        let rows = statement.query_map([], |row| {
            Ok(EvalSuiteRow { name: row.get(0)?, cases: row.get::<_, i64>(1)? as usize, created_at: row.get(2)? })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Create a run once; a resumed job finds its run again.
    pub fn ensure_eval_run(
        &self,
        id: &str,
        job_id: &str,
        target: &str,
        model_id: Option<&str>,
        suites: &[String],
    ) -> StoreResult<()> {
        let suites = serde_json::to_string(suites).expect("names serialise");
        self.conn.execute(
            "INSERT OR IGNORE INTO eval_runs (id, job_id, target, model_id, suites, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![id, job_id, target, model_id, suites, now_rfc3339()],
        )?;
        Ok(())
    }

    /// Store one scored case together with the job's checkpoint (one transaction).
    #[allow(clippy::too_many_arguments)]
    pub fn insert_eval_case(
        &mut self,
        run_id: &str,
        position: usize,
        case_id: &str,
        suite: &str,
        category: &str,
        score: &Value,
        episode: &Value,
        case: &Value,
        checkpoint: (&str, &str),
    ) -> StoreResult<()> {
        let transaction = self.conn.transaction()?;
        transaction.execute(
            "INSERT OR REPLACE INTO eval_cases (run_id, position, case_id, suite, category, score, episode, eval_case)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                run_id,
                position as i64,
                case_id,
                suite,
                category,
                score.to_string(),
                episode.to_string(),
                case.to_string()
            ],
        )?;
        super::jobs::write_checkpoint(&transaction, checkpoint.0, checkpoint.1, &now_rfc3339())?;
        transaction.commit()?;
        Ok(())
    }

    pub fn finish_eval_run(&self, id: &str, summary: &Value) -> StoreResult<()> {
        let changed = self.conn.execute(
            "UPDATE eval_runs SET summary = ?1, finished_at = ?2 WHERE id = ?3",
            params![summary.to_string(), now_rfc3339(), id],
        )?;
        if changed == 0 {
            return Err(StoreError::Corrupt { id: id.to_string(), reason: "no such eval run".into() });
        }
        Ok(())
    }

    pub fn eval_cases(&self, run_id: &str) -> StoreResult<Vec<EvalCaseRow>> {
        let mut statement = self.conn.prepare(
            "SELECT position, case_id, suite, category, score, episode, eval_case FROM eval_cases WHERE run_id = ?
             ORDER BY position",
        )?;
        let rows = statement.query_map([run_id], |row| {
            Ok(EvalCaseRow {
                position: row.get::<_, i64>(0)? as usize,
                case_id: row.get(1)?,
                suite: row.get(2)?,
                category: row.get(3)?,
                score: json_column(row, 4)?,
                episode: json_column(row, 5)?,
                case: json_column(row, 6)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn get_eval_run(&self, id: &str) -> StoreResult<Option<EvalRunRow>> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM eval_runs WHERE id = ?");
        Ok(self.conn.query_row(&sql, [id], run_row).optional()?)
    }

    /// Newest first.
    pub fn list_eval_runs(&self, limit: i64) -> StoreResult<Vec<EvalRunRow>> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM eval_runs ORDER BY created_at DESC, id DESC LIMIT ?");
        let mut statement = self.conn.prepare(&sql)?;
        let rows = statement.query_map([limit], run_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct PromotionRow {
    pub model_id: String,
    pub previous: Option<String>,
    pub promoted: bool,
    pub reason: String,
    #[schema(value_type = Object)]
    pub decision: Value,
    pub created_at: String,
}

impl Db {
    /// The newest finished eval run of a model on exactly these suites.
    pub fn latest_eval_of(&self, model_id: &str, suites: &[String]) -> StoreResult<Option<EvalRunRow>> {
        let suites = serde_json::to_string(suites).expect("names serialise");
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM eval_runs WHERE model_id = ?1 AND suites = ?2 AND summary IS NOT NULL
             ORDER BY finished_at DESC, id DESC LIMIT 1"
        );
        Ok(self.conn.query_row(&sql, params![model_id, suites], run_row).optional()?)
    }

    /// Record a decision; when `promoted`, the model becomes the one champion (in one transaction).
    pub fn record_promotion(
        &mut self,
        model_id: &str,
        promoted: bool,
        reason: &str,
        decision: &Value,
    ) -> StoreResult<()> {
        let transaction = self.conn.transaction()?;
        let previous: Option<String> =
            transaction.query_row("SELECT id FROM models WHERE is_champion = 1", [], |r| r.get(0)).optional()?;
        transaction.execute(
            "INSERT INTO promotions (model_id, previous, promoted, reason, decision, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![model_id, previous, promoted, reason, decision.to_string(), now_rfc3339()],
        )?;
        if promoted {
            transaction.execute("UPDATE models SET is_champion = (id = ?1)", [model_id])?;
        }
        transaction.commit()?;
        Ok(())
    }

    /// Newest first.
    pub fn list_promotions(&self, limit: i64) -> StoreResult<Vec<PromotionRow>> {
        let mut statement = self.conn.prepare(
            "SELECT model_id, previous, promoted, reason, decision, created_at FROM promotions ORDER BY id DESC LIMIT ?",
        )?;
        let rows = statement.query_map([limit], |row| {
            Ok(PromotionRow {
                model_id: row.get(0)?,
                previous: row.get(1)?,
                promoted: row.get::<_, i64>(2)? != 0,
                reason: row.get(3)?,
                decision: json_column(row, 4)?,
                created_at: row.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}
