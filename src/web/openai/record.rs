//! Recording served chat completions (`serve --record-traces`): what a request sent is kept
//! beside its decode, and once the reply has finished — whole or streamed — the exchange is
//! redacted, validated into a `source: served` trace (`serve::record`) and inserted with the
//! store's idempotent insert on the blocking pool, detached from the response, so recording
//! never fails or delays a reply. A conversation that is not a valid trace (no user prompt,
//! ...) is skipped with a debug line; a store failure is logged as a warning.

use serde_json::{Map, Value};

use super::wire::{FinishReason, ToolCall};
use crate::serve::record::{default_redactor, Exchange, ServedBy};
use crate::serve::registry::ServedModel;
use crate::store::{InsertOutcome, Store};
use crate::traces::{Message, Role};
use crate::web::AppState;

/// The request side of one chat completion that is to be recorded.
pub(super) struct Recorder {
    store: Store,
    messages: Vec<Message>,
    tools: Vec<Value>,
    served_by: ServedBy,
}

impl Recorder {
    /// A recorder for this request, or `None` when the server does not record traces.
    pub(super) fn new(
        state: &AppState,
        messages: &[Message],
        tools: &[Value],
        model: &ServedModel,
    ) -> Option<Recorder> {
        state.record_traces.then(|| Recorder {
            store: state.store.clone(),
            messages: messages.to_vec(),
            tools: tools.to_vec(),
            served_by: ServedBy { model: model.name.clone(), version: model.version.clone() },
        })
    }

    /// The reply finished: store the exchange in the background.
    pub(super) fn finish(self, content: Option<String>, calls: &[ToolCall], finish: FinishReason) {
        let reply = Message {
            role: Role::Assistant,
            content,
            tool_calls: calls
                .iter()
                .map(|call| crate::traces::ToolCall {
                    id: call.id.clone(),
                    name: call.function.name.clone(),
                    arguments: call.function.arguments.clone(),
                })
                .collect(),
            tool_call_id: None,
            name: None,
        };
        let finish_reason = serde_json::to_value(finish).unwrap_or(Value::Null);
        // Detached: the handle is dropped, the task runs to its end on the blocking pool.
        drop(actix_web::rt::task::spawn_blocking(move || self.store_reply(reply, finish_reason)));
    }

    fn store_reply(self, reply: Message, finish_reason: Value) {
        let trace = Exchange::new(self.messages, self.tools, reply, default_redactor()).and_then(|exchange| {
            let mut metadata = Map::new();
            metadata.insert("finish_reason".into(), finish_reason);
            exchange.trace(&self.served_by, metadata)
        });
        let trace = match trace {
            Ok(trace) => trace,
            Err(reason) => {
                tracing::debug!("served conversation not recorded: {reason}");
                return;
            }
        };
        let stored = self.store.connect().and_then(|mut db| db.insert_traces(std::slice::from_ref(&trace), |_| None));
        match stored {
            Ok(outcomes) if outcomes.first() == Some(&InsertOutcome::Inserted) => {
                tracing::debug!(trace = %trace.id, model = %self.served_by.version, "served conversation recorded")
            }
            Ok(_) => tracing::debug!(hash = %trace.content_hash, "served conversation already stored"),
            Err(error) => tracing::warn!("recording a served conversation failed: {error}"),
        }
    }
}
