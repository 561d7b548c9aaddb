//! Typed queries on `traces`: batched idempotent inserts (dedupe by content hash), the upsert
//! by id that captured traces use (a turn still being written is updated in place), lookup,
//! filtered listing with pagination, counts, delete.

use std::sync::LazyLock;

use rusqlite::types::Value;
use rusqlite::{params_from_iter, Connection, OptionalExtension, ToSql};

use super::{Db, StoreError, StoreResult};
use crate::traces::formats::{parse_record, ImportFormat};
use crate::traces::wire::to_canonical_json;
use crate::traces::{OutcomeStatus, Source, Split, Trace};

/// What happened to one trace of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertOutcome {
    Inserted,
    /// The same content (hash) is already stored.
    Duplicate,
    /// The id is taken by a trace with different content; nothing was written.
    IdConflict,
}

/// What an upsert by id did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpsertOutcome {
    Inserted,
    /// A trace with this id existed with other content; its row now holds the new content.
    Updated,
    /// The stored trace with this id already has this content.
    Unchanged,
    /// Another trace (another id) already holds this content; nothing was written.
    Duplicate,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
pub struct TraceFilter {
    pub source: Option<Source>,
    pub category: Option<String>,
    pub split: Option<Split>,
    pub outcome: Option<OutcomeStatus>,
    /// Case-insensitive substring of the prompt or any message text.
    pub text: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct TraceSummary {
    pub id: String,
    pub source: String,
    pub category: String,
    pub prompt: String,
    pub split: String,
    pub outcome: String,
    pub n_tool_calls: i64,
    pub created_at: String,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct NamedCount {
    pub name: String,
    pub count: i64,
}

#[derive(Debug, Clone, Default, serde::Serialize, utoipa::ToSchema)]
pub struct TraceCounts {
    pub total: i64,
    pub by_source: Vec<NamedCount>,
    pub by_category: Vec<NamedCount>,
    pub by_split: Vec<NamedCount>,
    pub by_outcome: Vec<NamedCount>,
}

impl TraceFilter {
    fn where_clause(&self) -> (String, Vec<Box<dyn ToSql>>) {
        let mut clauses: Vec<&str> = Vec::new();
        let mut values: Vec<Box<dyn ToSql>> = Vec::new();
        if let Some(source) = self.source {
            clauses.push("source = ?");
            values.push(Box::new(source.as_str()));
        }
        if let Some(category) = self.category.as_ref().filter(|c| !c.is_empty()) {
            clauses.push("category = ?");
            values.push(Box::new(category.clone()));
        }
        if let Some(split) = self.split {
            clauses.push("split = ?");
            values.push(Box::new(split.as_str()));
        }
        if let Some(outcome) = self.outcome {
            clauses.push("outcome_status = ?");
            values.push(Box::new(outcome.as_str()));
        }
        if let Some(text) = self.text.as_ref().map(|t| t.trim()).filter(|t| !t.is_empty()) {
            let escaped = text.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
            clauses.push("(prompt LIKE ? ESCAPE '\\' OR body LIKE ? ESCAPE '\\')");
            values.push(Box::new(format!("%{escaped}%")));
            values.push(Box::new(format!("%{escaped}%")));
        }
        if clauses.is_empty() {
            (String::new(), values)
        } else {
            (format!("WHERE {}", clauses.join(" AND ")), values)
        }
    }
}

impl Db {
    /// Insert a batch in one transaction; each trace is one row, so a record is all or nothing.
    /// `checkpoint` sees the outcomes and may return `(job_id, state)` to save on that job in the
    /// same transaction, so a resumed job never re-reads what was committed nor skips what was not.
    pub fn insert_traces(
        &mut self,
        traces: &[Trace],
        checkpoint: impl FnOnce(&[InsertOutcome]) -> Option<(String, String)>,
    ) -> StoreResult<Vec<InsertOutcome>> {
        let now = crate::traces::now_rfc3339();
        let transaction = self.conn.transaction()?;
        let mut outcomes = Vec::with_capacity(traces.len());
        for trace in traces {
            outcomes.push(insert_trace_row(&transaction, trace, &now)?);
        }
        if let Some((job_id, state)) = checkpoint(&outcomes) {
            super::jobs::write_checkpoint(&transaction, &job_id, &state, &now)?;
        }
        transaction.commit()?;
        Ok(outcomes)
    }

    pub fn get_trace(&self, id: &str) -> StoreResult<Option<Trace>> {
        let body: Option<String> =
            self.conn.query_row("SELECT body FROM traces WHERE id = ?", [id], |row| row.get(0)).optional()?;
        body.map(|body| decode_body(id, &body)).transpose()
    }

    pub fn delete_trace(&self, id: &str) -> StoreResult<bool> {
        Ok(self.conn.execute("DELETE FROM traces WHERE id = ?", [id])? > 0)
    }

    pub fn count_traces(&self, filter: &TraceFilter) -> StoreResult<i64> {
        let (where_sql, values) = filter.where_clause();
        let sql = format!("SELECT COUNT(*) FROM traces {where_sql}");
        Ok(self.conn.query_row(&sql, params_from_iter(values.iter()), |row| row.get(0))?)
    }

    /// Newest first.
    pub fn list_traces(&self, filter: &TraceFilter, limit: i64, offset: i64) -> StoreResult<Vec<TraceSummary>> {
        let (where_sql, mut values) = filter.where_clause();
        let sql = format!(
            "SELECT id, source, category, prompt, split, outcome_status, n_tool_calls, created_at
             FROM traces {where_sql} ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?"
        );
        values.push(Box::new(limit));
        values.push(Box::new(offset));
        let mut statement = self.conn.prepare(&sql)?;
        let rows = statement.query_map(params_from_iter(values.iter()), |row| {
            Ok(TraceSummary {
                id: row.get(0)?,
                source: row.get(1)?,
                category: row.get(2)?,
                prompt: row.get(3)?,
                split: row.get(4)?,
                outcome: row.get(5)?,
                n_tool_calls: row.get(6)?,
                created_at: row.get(7)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Visit every matching trace, oldest first, without loading them all at once.
    pub fn for_each_trace(
        &self,
        filter: &TraceFilter,
        mut visit: impl FnMut(Trace) -> std::io::Result<()>,
    ) -> StoreResult<usize> {
        let (where_sql, values) = filter.where_clause();
        let sql = format!("SELECT id, body FROM traces {where_sql} ORDER BY created_at, id");
        let mut statement = self.conn.prepare(&sql)?;
        let mut rows = statement.query(params_from_iter(values.iter()))?;
        let mut count = 0;
        while let Some(row) = rows.next()? {
            let id: String = row.get(0)?;
            let body: String = row.get(1)?;
            visit(decode_body(&id, &body)?)
                .map_err(|e| StoreError::Corrupt { id: id.clone(), reason: format!("cannot write: {e}") })?;
            count += 1;
        }
        Ok(count)
    }

    pub fn trace_counts(&self) -> StoreResult<TraceCounts> {
        let group = |column: &str| -> StoreResult<Vec<NamedCount>> {
            let sql =
                format!("SELECT {column}, COUNT(*) FROM traces GROUP BY {column} ORDER BY COUNT(*) DESC, {column}");
            let mut statement = self.conn.prepare(&sql)?;
            let rows = statement.query_map([], |row| Ok(NamedCount { name: row.get(0)?, count: row.get(1)? }))?;
            Ok(rows.collect::<Result<_, _>>()?)
        };
        Ok(TraceCounts {
            total: self.conn.query_row("SELECT COUNT(*) FROM traces", [], |row| row.get(0))?,
            by_source: group("source")?,
            by_category: group("category")?,
            by_split: group("split")?,
            by_outcome: group("outcome_status")?,
        })
    }

    /// Distinct categories, for filter menus.
    pub fn trace_categories(&self) -> StoreResult<Vec<String>> {
        let mut statement = self.conn.prepare("SELECT DISTINCT category FROM traces ORDER BY category")?;
        let rows = statement.query_map([], |row| row.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

/// The columns a trace's content fills (besides `id` and `stored_at`), in `content_values` order.
const CONTENT_COLUMNS: [&str; 11] = [
    "content_hash",
    "source",
    "category",
    "prompt",
    "split",
    "outcome_status",
    "n_messages",
    "n_tool_calls",
    "tool_names",
    "body",
    "created_at",
];

/// A trace's values for `CONTENT_COLUMNS`: one list for the insert and the in-place update.
fn content_values(trace: &Trace) -> Vec<Value> {
    let tool_names: Vec<&str> = trace.tool_calls().map(|c| c.name.as_str()).collect();
    vec![
        Value::from(trace.content_hash.clone()),
        Value::from(trace.source.as_str().to_string()),
        Value::from(trace.category.clone()),
        Value::from(trace.prompt.clone()),
        Value::from(trace.split.as_str().to_string()),
        Value::from(trace.outcome.status.as_str().to_string()),
        Value::from(trace.messages.len() as i64),
        Value::from(trace.n_tool_calls() as i64),
        Value::from(tool_names.join(" ")),
        Value::from(to_canonical_json(trace)),
        Value::from(trace.created_at.clone()),
    ]
}

/// Insert one trace inside the caller's transaction; a stored hash or a taken id writes nothing.
pub(super) fn insert_trace_row(conn: &Connection, trace: &Trace, now: &str) -> StoreResult<InsertOutcome> {
    if conn.prepare_cached("SELECT 1 FROM traces WHERE content_hash = ?")?.exists([&trace.content_hash])? {
        return Ok(InsertOutcome::Duplicate);
    }
    if conn.prepare_cached("SELECT 1 FROM traces WHERE id = ?")?.exists([&trace.id])? {
        return Ok(InsertOutcome::IdConflict);
    }
    let mut values = vec![Value::from(trace.id.clone())];
    values.extend(content_values(trace));
    values.push(Value::from(now.to_string()));
    static INSERT: LazyLock<String> = LazyLock::new(|| {
        format!(
            "INSERT INTO traces (id, {}, stored_at) VALUES (?, {}, ?)",
            CONTENT_COLUMNS.join(", "),
            vec!["?"; CONTENT_COLUMNS.len()].join(", ")
        )
    });
    conn.prepare_cached(&INSERT)?.execute(params_from_iter(values))?;
    Ok(InsertOutcome::Inserted)
}

/// Insert, or replace the content of the trace with the same id, inside the caller's
/// transaction. The id is the identity here: callers derive it from where the trace came from,
/// so the same origin is never stored twice. `stored_at` keeps the first store time.
pub(super) fn upsert_trace_row(conn: &Connection, trace: &Trace, now: &str) -> StoreResult<UpsertOutcome> {
    let stored_hash: Option<String> = conn
        .prepare_cached("SELECT content_hash FROM traces WHERE id = ?")?
        .query_row([&trace.id], |row| row.get(0))
        .optional()?;
    if stored_hash.as_deref() == Some(trace.content_hash.as_str()) {
        return Ok(UpsertOutcome::Unchanged);
    }
    if let Some(holder) = trace_id_by_hash(conn, &trace.content_hash)? {
        if holder != trace.id {
            return Ok(UpsertOutcome::Duplicate);
        }
    }
    if stored_hash.is_none() {
        return Ok(match insert_trace_row(conn, trace, now)? {
            InsertOutcome::Inserted => UpsertOutcome::Inserted,
            _ => UpsertOutcome::Duplicate,
        });
    }
    let mut values = content_values(trace);
    values.push(Value::from(trace.id.clone()));
    static UPDATE: LazyLock<String> = LazyLock::new(|| {
        let assignments: Vec<String> = CONTENT_COLUMNS.iter().map(|column| format!("{column} = ?")).collect();
        format!("UPDATE traces SET {} WHERE id = ?", assignments.join(", "))
    });
    conn.prepare_cached(&UPDATE)?.execute(params_from_iter(values))?;
    Ok(UpsertOutcome::Updated)
}

/// The id of the stored trace with this content, if any.
pub(super) fn trace_id_by_hash(conn: &Connection, content_hash: &str) -> StoreResult<Option<String>> {
    Ok(conn
        .prepare_cached("SELECT id FROM traces WHERE content_hash = ?")?
        .query_row([content_hash], |row| row.get(0))
        .optional()?)
}

fn decode_body(id: &str, body: &str) -> StoreResult<Trace> {
    parse_record(ImportFormat::Canonical, body).map_err(|reason| StoreError::Corrupt { id: id.to_string(), reason })
}
