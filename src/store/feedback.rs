//! Typed queries on `feedback`: Playground ratings of served replies. Each rating is written in
//! one transaction with what it yields — the trace of a thumbs up, the preference pair and SFT
//! trace of an edit saved as preferred, nothing else for a thumbs down — and a trace or pair
//! already stored with the same content is linked, never duplicated. Listing newest first.

use rusqlite::{params, OptionalExtension};
use serde_json::Value;

use super::pairs::{insert_pair_row, pair_id_by_hash};
use super::traces::{insert_trace_row, trace_id_by_hash};
use super::{Db, PairInsertOutcome, StoreError, StoreResult};
use crate::traces::preference::PreferencePair;
use crate::traces::Trace;

/// One stored rating.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct FeedbackRow {
    pub id: String,
    /// `up`, `down` or `preferred`.
    pub rating: String,
    /// The served model's name and version (export or model id) that wrote the reply.
    pub model: String,
    pub version: String,
    /// `{"messages", "tools", "reply", "edited"}`: the redacted conversation before the reply,
    /// the offered tools, the model's reply and the edit (null unless preferred), as OpenAI messages.
    #[schema(value_type = Object)]
    pub body: Value,
    /// The trace this rating stored or found (thumbs up; the chosen side of a preferred edit).
    pub trace_id: Option<String>,
    /// The preference pair this rating stored or found (preferred edits).
    pub pair_id: Option<String>,
    pub created_at: String,
}

/// What a rating yields besides its own row.
#[derive(Debug, Clone, Copy)]
pub enum FeedbackYield<'a> {
    Nothing,
    Trace(&'a Trace),
    /// A pair and the SFT trace of its chosen side, inserted as `insert_pairs` does.
    Pair(&'a PreferencePair, &'a Trace),
}

impl Db {
    /// Store a rating with what it yields, in one transaction; returns the row with its links.
    /// `feedback.trace_id` and `feedback.pair_id` are ignored: they are set from what was stored.
    pub fn record_feedback(&mut self, feedback: &FeedbackRow, yields: FeedbackYield<'_>) -> StoreResult<FeedbackRow> {
        let now = crate::traces::now_rfc3339();
        let transaction = self.conn.transaction()?;
        let existing_trace = |trace: &Trace| -> StoreResult<String> {
            trace_id_by_hash(&transaction, &trace.content_hash)?.ok_or_else(|| {
                StoreError::Conflict(format!("trace id {} is taken by a trace with other content", trace.id))
            })
        };
        let (trace_id, pair_id) = match yields {
            FeedbackYield::Nothing => (None, None),
            FeedbackYield::Trace(trace) => {
                insert_trace_row(&transaction, trace, &now)?;
                (Some(existing_trace(trace)?), None)
            }
            FeedbackYield::Pair(pair, trace) => {
                if insert_pair_row(&transaction, pair, Some(trace), &now)? == PairInsertOutcome::IdConflict {
                    return Err(StoreError::Conflict(format!("pair id {} is taken by another pair", pair.id)));
                }
                let pair_id = pair_id_by_hash(&transaction, &pair.content_hash)?;
                let trace_id: Option<String> = transaction
                    .prepare_cached("SELECT trace_id FROM preference_pairs WHERE content_hash = ?")?
                    .query_row([&pair.content_hash], |row| row.get(0))
                    .optional()?
                    .flatten();
                (trace_id, pair_id)
            }
        };
        transaction
            .prepare_cached(
                "INSERT INTO feedback (id, rating, model, version, body, trace_id, pair_id, created_at)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            )?
            .execute(params![
                feedback.id,
                feedback.rating,
                feedback.model,
                feedback.version,
                feedback.body.to_string(),
                trace_id,
                pair_id,
                feedback.created_at,
            ])?;
        transaction.commit()?;
        Ok(FeedbackRow { trace_id, pair_id, ..feedback.clone() })
    }

    pub fn count_feedback(&self) -> StoreResult<i64> {
        Ok(self.conn.query_row("SELECT COUNT(*) FROM feedback", [], |row| row.get(0))?)
    }

    /// Newest first.
    pub fn list_feedback(&self, limit: i64, offset: i64) -> StoreResult<Vec<FeedbackRow>> {
        let mut statement = self.conn.prepare(
            "SELECT id, rating, model, version, body, trace_id, pair_id, created_at FROM feedback
             ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?",
        )?;
        let rows = statement.query_map(params![limit, offset], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get(1)?,
                row.get(2)?,
                row.get(3)?,
                row.get::<_, String>(4)?,
                row.get(5)?,
                row.get(6)?,
                row.get(7)?,
            ))
        })?;
        rows.map(|row| {
            let (id, rating, model, version, body, trace_id, pair_id, created_at) = row?;
            let body = serde_json::from_str(&body)
                .map_err(|e| StoreError::Corrupt { id: id.clone(), reason: format!("body is not JSON: {e}") })?;
            Ok(FeedbackRow { id, rating, model, version, body, trace_id, pair_id, created_at })
        })
        .collect()
    }
}
