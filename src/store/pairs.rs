//! Typed queries on `preference_pairs`: batched idempotent inserts of pairs together with the
//! SFT trace each one yields (dedupe by content hash, one transaction per batch with the job
//! checkpoint), pairs mined from episodes without one, counts and pagination. Stored bodies are
//! re-validated when read.

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::{Map, Value};

use super::traces::{insert_trace_row, trace_id_by_hash};
use super::{Db, InsertOutcome, StoreError, StoreResult};
use crate::traces::preference::{pair_draft_from_object, PreferencePair};
use crate::traces::{Source, Trace};

/// What happened to one pair of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairInsertOutcome {
    /// The pair is stored; `new_trace` says whether its SFT trace was new too (the same prompt
    /// and chosen answer may already be stored, from another pair or another source).
    Inserted { new_trace: bool },
    /// The same pair (content hash) is already stored; nothing was written.
    Duplicate,
    /// The id is taken by a pair with different content; nothing was written.
    IdConflict,
}

/// A stored pair and the trace it yielded (unset once that trace is deleted).
#[derive(Debug, Clone)]
pub struct StoredPair {
    pub pair: PreferencePair,
    pub trace_id: Option<String>,
}

impl Db {
    /// Insert a batch of pairs, each with its SFT trace, in one transaction: a pair and its
    /// trace are written together or not at all. `checkpoint` sees the outcomes and may return
    /// `(job_id, state)` to save on that job in the same transaction.
    pub fn insert_pairs(
        &mut self,
        pairs: &[(PreferencePair, Trace)],
        checkpoint: impl FnOnce(&[PairInsertOutcome]) -> Option<(String, String)>,
    ) -> StoreResult<Vec<PairInsertOutcome>> {
        let now = crate::traces::now_rfc3339();
        let transaction = self.conn.transaction()?;
        let mut outcomes = Vec::with_capacity(pairs.len());
        for (pair, trace) in pairs {
            outcomes.push(insert_pair_row(&transaction, pair, Some(trace), &now)?);
        }
        if let Some((job_id, state)) = checkpoint(&outcomes) {
            super::jobs::write_checkpoint(&transaction, &job_id, &state, &now)?;
        }
        transaction.commit()?;
        Ok(outcomes)
    }

    /// Insert pairs mined from episodes, in one transaction. They yield no SFT trace: a
    /// mined reply is a decision between two of the model's own attempts, not a demonstration.
    pub fn insert_mined_pairs(&mut self, pairs: &[PreferencePair]) -> StoreResult<Vec<PairInsertOutcome>> {
        let now = crate::traces::now_rfc3339();
        let transaction = self.conn.transaction()?;
        let outcomes = pairs
            .iter()
            .map(|pair| insert_pair_row(&transaction, pair, None, &now))
            .collect::<StoreResult<Vec<_>>>()?;
        transaction.commit()?;
        Ok(outcomes)
    }

    pub fn count_pairs(&self) -> StoreResult<i64> {
        Ok(self.conn.query_row("SELECT COUNT(*) FROM preference_pairs", [], |row| row.get(0))?)
    }

    /// Newest first.
    pub fn list_pairs(&self, limit: i64, offset: i64) -> StoreResult<Vec<StoredPair>> {
        let mut statement = self.conn.prepare(
            "SELECT id, content_hash, source, body, trace_id, created_at FROM preference_pairs
             ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?",
        )?;
        let rows = statement.query_map(params![limit, offset], pair_row)?;
        rows.map(|row| row.map_err(StoreError::from).and_then(decode_pair)).collect()
    }

    pub fn get_pair(&self, id: &str) -> StoreResult<Option<StoredPair>> {
        self.conn
            .query_row(
                "SELECT id, content_hash, source, body, trace_id, created_at FROM preference_pairs WHERE id = ?",
                [id],
                pair_row,
            )
            .optional()?
            .map(decode_pair)
            .transpose()
    }
}

/// Insert one pair and its SFT trace, if it has one, inside the caller's transaction (see
/// [`Db::insert_pairs`]).
pub(super) fn insert_pair_row(
    conn: &Connection,
    pair: &PreferencePair,
    trace: Option<&Trace>,
    now: &str,
) -> StoreResult<PairInsertOutcome> {
    if conn.prepare_cached("SELECT 1 FROM preference_pairs WHERE content_hash = ?")?.exists([&pair.content_hash])? {
        return Ok(PairInsertOutcome::Duplicate);
    }
    if conn.prepare_cached("SELECT 1 FROM preference_pairs WHERE id = ?")?.exists([&pair.id])? {
        return Ok(PairInsertOutcome::IdConflict);
    }
    let (trace_id, new_trace) = match trace {
        None => (None, false),
        Some(trace) => match insert_trace_row(conn, trace, now)? {
            InsertOutcome::Inserted => (Some(trace.id.clone()), true),
            InsertOutcome::Duplicate | InsertOutcome::IdConflict => {
                let existing = trace_id_by_hash(conn, &trace.content_hash)?.ok_or_else(|| {
                    StoreError::Conflict(format!("trace id {} is taken by a trace with other content", trace.id))
                })?;
                (Some(existing), false)
            }
        },
    };
    conn.prepare_cached(
        "INSERT INTO preference_pairs (id, content_hash, source, prompt_text, body, trace_id, created_at)
         VALUES (?, ?, ?, ?, ?, ?, ?)",
    )?
    .execute(params![
        pair.id,
        pair.content_hash,
        pair.source.as_str(),
        pair.prompt_text(),
        pair.body_json(),
        trace_id,
        pair.created_at,
    ])?;
    Ok(PairInsertOutcome::Inserted { new_trace })
}

/// The id of the stored pair with this content, if any.
pub(super) fn pair_id_by_hash(conn: &Connection, content_hash: &str) -> StoreResult<Option<String>> {
    Ok(conn
        .prepare_cached("SELECT id FROM preference_pairs WHERE content_hash = ?")?
        .query_row([content_hash], |row| row.get(0))
        .optional()?)
}

struct PairRow {
    id: String,
    content_hash: String,
    source: String,
    body: String,
    trace_id: Option<String>,
    created_at: String,
}

fn pair_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<PairRow> {
    Ok(PairRow {
        id: row.get(0)?,
        content_hash: row.get(1)?,
        source: row.get(2)?,
        body: row.get(3)?,
        trace_id: row.get(4)?,
        created_at: row.get(5)?,
    })
}

fn decode_pair(row: PairRow) -> StoreResult<StoredPair> {
    let corrupt = |reason: String| StoreError::Corrupt { id: row.id.clone(), reason };
    let body: Map<String, Value> =
        serde_json::from_str(&row.body).map_err(|e| corrupt(format!("body is not a JSON object: {e}")))?;
    let mut draft = pair_draft_from_object(body).map_err(corrupt)?;
    draft.id = Some(row.id.clone());
    draft.source = Some(Source::parse(&row.source).ok_or_else(|| corrupt(format!("unknown source {:?}", row.source)))?);
    draft.created_at = Some(row.created_at.clone());
    let pair = PreferencePair::new(draft).map_err(|e| corrupt(e.to_string()))?;
    if pair.content_hash != row.content_hash {
        return Err(corrupt("body does not match its content hash".into()));
    }
    Ok(StoredPair { pair, trace_id: row.trace_id })
}
