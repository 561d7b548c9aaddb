//! Server-sent events as OpenAI streams them: the streaming response (its headers), the
//! `data: {json}\n\n` framing of each event, the closing `data: [DONE]`, and [`relay`], which
//! turns the decode events of one request into a stream of SSE events through an endpoint's
//! [`Relay`]. A failed or abandoned decode ends the stream with one event in the same error
//! envelope as every other error (the detail is logged, never sent).

use std::collections::VecDeque;

use actix_web::{web, HttpResponse};
use futures_util::Stream;
use serde::Serialize;
use tokio::sync::mpsc::UnboundedReceiver;

use super::{served_by, OpenAiError, ENGINE_STOPPED};
use crate::serve::decode::{Event, Finish, TokenLogprob};
use crate::serve::registry::ServedModel;

/// The response that carries a stream of events from `model`.
pub(super) fn response(
    model: &ServedModel,
    stream: impl Stream<Item = Result<web::Bytes, actix_web::Error>> + 'static,
) -> HttpResponse {
    let [version, runtime] = served_by(model);
    HttpResponse::Ok()
        .insert_header(version)
        .insert_header(runtime)
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(stream)
}

/// One `data:` event carrying `value` as JSON.
fn event(value: &impl Serialize) -> web::Bytes {
    let json = serde_json::to_string(value).unwrap_or_else(|e| {
        let error = OpenAiError::internal(format!("serializing an event: {e}"));
        serde_json::to_string(&error.envelope()).unwrap_or_default()
    });
    web::Bytes::from(format!("data: {json}\n\n"))
}

/// The events waiting to be sent.
#[derive(Default)]
pub(super) struct Outbox(VecDeque<web::Bytes>);

impl Outbox {
    pub(super) fn push(&mut self, value: &impl Serialize) {
        self.0.push_back(event(value));
    }

    fn error(&mut self, error: &OpenAiError) {
        self.push(&error.envelope());
    }

    fn done(&mut self) {
        self.0.push_back(web::Bytes::from_static(b"data: [DONE]\n\n"));
    }
}

/// What one streaming endpoint sends for the events of a decode; failures are handled by [`relay`].
pub(super) trait Relay: 'static {
    fn token(&mut self, id: u32, logprob: Option<TokenLogprob>, outbox: &mut Outbox);
    fn text(&mut self, piece: String, outbox: &mut Outbox);
    /// The last events before `data: [DONE]` (which [`relay`] adds).
    fn finish(&mut self, finish: Finish, prompt_tokens: usize, completion_tokens: usize, outbox: &mut Outbox);
}

/// The SSE stream of one decode: what `outbox` already holds, then what `relay` makes of each
/// event, then `data: [DONE]`; or, when the decode fails or its workers go away, an error event.
pub(super) fn relay<R: Relay>(
    events: UnboundedReceiver<Event>,
    relay: R,
    outbox: Outbox,
) -> impl Stream<Item = Result<web::Bytes, actix_web::Error>> {
    struct State<R> {
        events: UnboundedReceiver<Event>,
        relay: R,
        outbox: Outbox,
        done: bool,
    }
    let state = State { events, relay, outbox, done: false };
    futures_util::stream::unfold(state, |mut state| async move {
        loop {
            if let Some(bytes) = state.outbox.0.pop_front() {
                return Some((Ok(bytes), state));
            }
            if state.done {
                return None;
            }
            match state.events.recv().await {
                Some(Event::Token { id, logprob }) => state.relay.token(id, logprob, &mut state.outbox),
                Some(Event::Text(piece)) => state.relay.text(piece, &mut state.outbox),
                Some(Event::Done { finish, prompt_tokens, completion_tokens }) => {
                    state.relay.finish(finish, prompt_tokens, completion_tokens, &mut state.outbox);
                    state.outbox.done();
                    state.done = true;
                }
                Some(Event::Failed(detail)) => {
                    state.outbox.error(&OpenAiError::internal(format!("stream failed: {detail}")));
                    state.done = true;
                }
                None => {
                    state.outbox.error(&OpenAiError::internal(ENGINE_STOPPED));
                    state.done = true;
                }
            }
        }
    })
}
