//! `POST /v1/completions`, the legacy raw-text endpoint: the prompt (a string, `[string]` or
//! token ids) is decoded as is, with no chat template and no reply parsing; the reply is the
//! text (after the prompt when `echo` is set), whole or streamed, with optional logprobs.

use std::sync::Arc;
use std::time::Instant;

use actix_web::{web, HttpResponse};
use serde_json::Value;

use super::sse::{self, Outbox, Relay};
use super::wire::{
    Completion, CompletionChoice, CompletionChunk, CompletionLogprobs, CompletionRequest, FinishReason,
    OpenAiErrorBody, Usage,
};
use super::{
    check_common, max_new_tokens, new_id, parse_body, reply, served_model, stop_list, tokenize, unix_now, OpenAiError,
    ENGINE_STOPPED,
};
use crate::serve::decode::{Event, Finish, Sampling, TokenLogprob};
use crate::serve::registry::ServedModel;
use crate::web::metrics::Metrics;
use crate::web::AppState;

fn prompt_ids(model: &ServedModel, prompt: &Value) -> Result<(String, Vec<u32>), OpenAiError> {
    let param = || Some("prompt".to_string());
    match prompt {
        Value::String(text) => Ok((text.clone(), tokenize(model, text)?)),
        Value::Array(items) if items.len() == 1 && items[0].is_string() => prompt_ids(model, &items[0]),
        Value::Array(items) if items.iter().all(Value::is_u64) => {
            let ids: Vec<u32> = items.iter().filter_map(Value::as_u64).map(|v| v as u32).collect();
            let vocab = model.vocab_size as u32;
            if let Some(bad) = ids.iter().find(|&&id| id >= vocab) {
                return Err(OpenAiError::bad_request(
                    param(),
                    format!("prompt: token id {bad} is outside the vocabulary ({vocab})"),
                ));
            }
            let text = model.tokenizer.decode(&ids, false).unwrap_or_default();
            Ok((text, ids))
        }
        Value::Array(_) => Err(OpenAiError::bad_request(
            param(),
            "prompt: only one prompt per request (a string, [string] or token ids)",
        )),
        _ => Err(OpenAiError::bad_request(param(), "prompt: expected a string or token ids")),
    }
}

/// A raw text completion (no chat template).
#[utoipa::path(
    post,
    path = "/v1/completions",
    tag = "openai",
    request_body = CompletionRequest,
    responses(
        (status = 200, description = "text_completion; streamed: SSE text_completion chunks, then data: [DONE]",
            content((Completion = "application/json"), (CompletionChunk = "text/event-stream"))),
        (status = 400, body = OpenAiErrorBody),
        (status = 401, body = OpenAiErrorBody),
        (status = 404, body = OpenAiErrorBody),
        (status = 429, body = OpenAiErrorBody),
        (status = 500, body = OpenAiErrorBody)
    )
)]
pub async fn completions(state: web::Data<AppState>, body: web::Bytes) -> Result<HttpResponse, OpenAiError> {
    let started = Instant::now();
    let result = completions_inner(&state, &body).await;
    state.serving.metrics.request(
        "completions",
        result.as_ref().map_or_else(|e| e.status.as_u16(), |r| r.status().as_u16()),
        started.elapsed().as_secs_f64(),
    );
    result
}

async fn completions_inner(state: &AppState, body: &[u8]) -> Result<HttpResponse, OpenAiError> {
    let request: CompletionRequest = parse_body(body)?;
    check_common(request.temperature, request.top_p, request.n)?;
    let stop = stop_list(&request.stop)?;
    if request.logprobs.is_some_and(|n| n > 5) {
        return Err(OpenAiError::bad_request(Some("logprobs".into()), "logprobs: at most 5"));
    }
    let model = served_model(state, request.model.as_deref()).await?;
    let (prompt_text, ids) = prompt_ids(&model, &request.prompt)?;
    if ids.is_empty() {
        return Err(OpenAiError::bad_request(Some("prompt".into()), "prompt: empty"));
    }
    let max_tokens = max_new_tokens(request.max_tokens, 16, ids.len(), &model)?;
    let sampling = Sampling {
        max_tokens,
        temperature: request.temperature.unwrap_or(0.0),
        top_p: request.top_p.unwrap_or(1.0),
        seed: request.seed.unwrap_or(0),
        stop,
        logprobs: request.logprobs.map(|n| n as usize),
        grammar: None,
    };
    let prompt_tokens = ids.len();
    let mut events = state.serving.decoders.submit(Arc::clone(&model), ids, sampling)?;
    let id = new_id("cmpl-");
    let created = unix_now();
    let echo = if request.echo { prompt_text } else { String::new() };
    if request.stream {
        let relay = CompletionStream {
            id,
            created,
            model: Arc::clone(&model),
            include_usage: request.stream_options.as_ref().is_some_and(|o| o.include_usage),
            prompt_tokens,
            metrics: Arc::clone(&state.serving.metrics),
        };
        let mut outbox = Outbox::default();
        if !echo.is_empty() {
            outbox.push(&relay.chunk(echo, None));
        }
        return Ok(sse::response(&model, sse::relay(events, relay, outbox)));
    }
    let mut text = echo;
    let mut tokens = Vec::new();
    let mut logprobs: Vec<TokenLogprob> = Vec::new();
    let (finish, completion_tokens) = loop {
        match events.recv().await {
            Some(Event::Token { id, logprob }) => {
                tokens.push(id);
                logprobs.extend(logprob);
            }
            Some(Event::Text(piece)) => text.push_str(&piece),
            Some(Event::Done { finish, completion_tokens, .. }) => break (finish, completion_tokens),
            Some(Event::Failed(detail)) => return Err(OpenAiError::internal(detail)),
            None => return Err(OpenAiError::internal(ENGINE_STOPPED)),
        }
    };
    state.serving.metrics.tokens(prompt_tokens, completion_tokens, None);
    let choice = CompletionChoice {
        text,
        index: 0,
        logprobs: request.logprobs.map(|_| CompletionLogprobs::new(&logprobs)),
        finish_reason: Some(FinishReason::of(finish, false)),
        token_ids: request.return_token_ids.then_some(tokens),
    };
    let usage = Usage::new(prompt_tokens, completion_tokens);
    Ok(reply(&model, &Completion::new(id, created, &model, choice, usage)))
}

/// State of one streamed completion: the text as it comes, then the finish reason.
struct CompletionStream {
    id: String,
    created: i64,
    model: Arc<ServedModel>,
    include_usage: bool,
    /// As counted here (the prompt's token ids), for usage and metrics.
    prompt_tokens: usize,
    metrics: Arc<Metrics>,
}

impl CompletionStream {
    fn chunk(&self, text: String, finish_reason: Option<FinishReason>) -> CompletionChunk {
        CompletionChunk::piece(&self.id, self.created, &self.model, CompletionChoice::piece(text, finish_reason))
    }
}

impl Relay for CompletionStream {
    fn token(&mut self, _id: u32, _logprob: Option<TokenLogprob>, _outbox: &mut Outbox) {}

    fn text(&mut self, piece: String, outbox: &mut Outbox) {
        if !piece.is_empty() {
            outbox.push(&self.chunk(piece, None));
        }
    }

    fn finish(&mut self, finish: Finish, _prompt_tokens: usize, completion_tokens: usize, outbox: &mut Outbox) {
        self.metrics.tokens(self.prompt_tokens, completion_tokens, None);
        outbox.push(&self.chunk(String::new(), Some(FinishReason::of(finish, false))));
        if self.include_usage {
            outbox.push(&CompletionChunk::usage(Usage::new(self.prompt_tokens, completion_tokens)));
        }
    }
}
