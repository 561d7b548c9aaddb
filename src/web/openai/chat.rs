//! `POST /v1/chat/completions`: validating the request (tools, tool_choice, messages), rendering
//! the prompt with the model's own chat template (the one training used), the forced prefix
//! and schema grammar that make `required` and named tool choices (and `response_format`'s JSON
//! modes) hold, decoding on the engine's workers, and the
//! reply, whole or streamed. Both go through the shared reply parser, so a streamed answer
//! reassembles to the non-streamed one; a stream sends each tool call as its id, type and name,
//! then its arguments. With `--record-traces`, a finished reply goes to `record`'s [`Recorder`].

use std::sync::Arc;
use std::time::Instant;

use actix_web::{web, HttpResponse};
use serde_json::Value;
use tokio::sync::mpsc::UnboundedReceiver;

use super::record::Recorder;
use super::sse::{self, Outbox, Relay};
use super::wire::{
    ChatChoice, ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, ChatLogprobs, ChatMessage, ChunkChoice,
    Delta, FinishReason, OpenAiErrorBody, ToolCall, Usage,
};
use super::{
    check_common, max_new_tokens, new_id, parse_body, reply, served_model, stop_list, tokenize, unix_now, OpenAiError,
    ENGINE_STOPPED,
};
use crate::model::constrain::{CallStyle, Grammar};
use crate::model::reply::{ReplyEvent, ReplyParser};
use crate::serve::decode::{Event, Finish, Sampling, TokenLogprob};
use crate::serve::registry::ServedModel;
use crate::traces::wire::{messages_from_wire, WireMessage};
use crate::traces::{Message, Role};
use crate::web::metrics::Metrics;
use crate::web::AppState;

// ---------------------------------------------------------------------------------------------
// The request

/// How tools may be used in this request.
#[derive(Debug, Clone, PartialEq)]
enum ToolMode {
    None,
    Auto,
    Required,
    Named(String),
}

fn tool_mode(request: &ChatCompletionRequest, tools: &[Value]) -> Result<ToolMode, OpenAiError> {
    let param = || Some("tool_choice".to_string());
    let mode = match &request.tool_choice {
        None | Some(Value::Null) => {
            if tools.is_empty() {
                ToolMode::None
            } else {
                ToolMode::Auto
            }
        }
        Some(Value::String(choice)) => match choice.as_str() {
            "none" => ToolMode::None,
            "auto" => ToolMode::Auto,
            "required" => ToolMode::Required,
            other => {
                return Err(OpenAiError::bad_request(
                    param(),
                    format!("tool_choice: {other:?} is not none, auto, required or a named function"),
                ))
            }
        },
        Some(Value::Object(object)) => {
            let name = object.get("function").and_then(|f| f.get("name")).and_then(Value::as_str);
            match name {
                Some(name) => ToolMode::Named(name.to_string()),
                None => {
                    return Err(OpenAiError::bad_request(
                        param(),
                        "tool_choice: expected {\"type\": \"function\", \"function\": {\"name\": ...}}",
                    ))
                }
            }
        }
        Some(_) => return Err(OpenAiError::bad_request(param(), "tool_choice: expected a string or an object")),
    };
    if matches!(mode, ToolMode::Required | ToolMode::Named(_)) && tools.is_empty() {
        return Err(OpenAiError::bad_request(param(), "tool_choice: requires tools"));
    }
    if let ToolMode::Named(name) = &mode {
        if !tools.iter().any(|t| t["function"]["name"].as_str() == Some(name.as_str())) {
            return Err(OpenAiError::bad_request(param(), format!("tool_choice: no tool named {name:?} in tools")));
        }
    }
    Ok(mode)
}

fn check_tools(tools: &[Value]) -> Result<(), OpenAiError> {
    for (index, tool) in tools.iter().enumerate() {
        let param = Some(format!("tools[{index}]"));
        if tool["type"].as_str() != Some("function") {
            return Err(OpenAiError::bad_request(
                param,
                format!("tools[{index}].type: only \"function\" tools are supported"),
            ));
        }
        if tool["function"]["name"].as_str().is_none_or(str::is_empty) {
            return Err(OpenAiError::bad_request(param, format!("tools[{index}].function.name is required")));
        }
        // As OpenAI: the parameters are a JSON Schema of `type: "object"` (or absent).
        match tool["function"].get("parameters") {
            None | Some(Value::Null) => {}
            Some(Value::Object(schema)) => {
                if let Some(kind) = schema.get("type").filter(|k| k.as_str() != Some("object")) {
                    return Err(OpenAiError::bad_request(
                        Some(format!("tools[{index}].function.parameters")),
                        format!(
                            "tools[{index}].function.parameters: the schema must be a JSON Schema of type \"object\", got type {kind}"
                        ),
                    ));
                }
            }
            Some(other) => {
                return Err(OpenAiError::bad_request(
                    Some(format!("tools[{index}].function.parameters")),
                    format!(
                        "tools[{index}].function.parameters: must be a JSON Schema object, got {}",
                        crate::traces::json_kind(other)
                    ),
                ))
            }
        }
    }
    Ok(())
}

/// OpenAI's message-sequence rules: an assistant message with `tool_calls` is followed by one
/// `tool` message per call id, and a `tool` message answers a call of the assistant message
/// before it.
fn check_sequence(messages: &[Message]) -> Result<(), OpenAiError> {
    let mut open: Vec<&str> = Vec::new();
    let mut asked_at = 0;
    for (index, message) in messages.iter().enumerate() {
        if message.role == Role::Tool {
            let id = message.tool_call_id.as_deref().unwrap_or("");
            match open.iter().position(|call| *call == id) {
                Some(position) => {
                    open.remove(position);
                }
                None => {
                    return Err(OpenAiError::bad_request(
                        Some(format!("messages[{index}]")),
                        format!(
                            "messages[{index}]: a message with role 'tool' must answer a tool call of the preceding assistant message; no open call has id {id:?}"
                        ),
                    ))
                }
            }
            continue;
        }
        if !open.is_empty() {
            return Err(OpenAiError::bad_request(
                Some(format!("messages[{asked_at}]")),
                format!(
                    "messages[{asked_at}]: an assistant message with 'tool_calls' must be followed by tool messages answering each tool_call_id; no answer to {}",
                    open.join(", ")
                ),
            ));
        }
        if message.role == Role::Assistant {
            open = message.tool_calls.iter().map(|call| call.id.as_str()).collect();
            asked_at = index;
        }
    }
    Ok(())
}

/// `response_format`: plain text (no grammar), `json_object` (any JSON object) or
/// `json_schema` (JSON matching `json_schema.schema`); the JSON ones are decoded in a grammar.
fn response_format(format: Option<&Value>) -> Result<Option<Grammar>, OpenAiError> {
    let param = |field: &str| Some(format!("response_format{field}"));
    let Some(format) = format else { return Ok(None) };
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(Grammar::json(None))),
        Some("json_schema") => {
            let Some(spec) = format.get("json_schema").filter(|s| s.is_object()) else {
                return Err(OpenAiError::bad_request(
                    param(".json_schema"),
                    "response_format.json_schema: expected an object with a \"name\" and a \"schema\"",
                ));
            };
            if !spec.get("name").is_some_and(Value::is_string) {
                return Err(OpenAiError::bad_request(
                    param(".json_schema.name"),
                    "response_format.json_schema.name: required, a string",
                ));
            }
            match spec.get("schema") {
                None => Ok(Some(Grammar::json(None))),
                Some(schema) if schema.is_object() => Ok(Some(Grammar::json(Some(schema)))),
                Some(_) => Err(OpenAiError::bad_request(
                    param(".json_schema.schema"),
                    "response_format.json_schema.schema: expected a JSON schema object",
                )),
            }
        }
        Some(kind) => Err(OpenAiError::bad_request(
            param(".type"),
            format!("response_format.type: {kind:?} is not text, json_object or json_schema"),
        )),
        None => Err(OpenAiError::bad_request(param(""), "response_format: expected an object with a \"type\"")),
    }
}

/// OpenAI messages → the canonical messages the chat template renders.
fn messages(raw: &[Value]) -> Result<Vec<Message>, OpenAiError> {
    if raw.is_empty() {
        return Err(OpenAiError::bad_request(Some("messages".into()), "messages: at least one message is required"));
    }
    let mut wire = Vec::with_capacity(raw.len());
    for (index, message) in raw.iter().enumerate() {
        let mut message = message.clone();
        let Some(object) = message.as_object_mut() else {
            return Err(OpenAiError::bad_request(
                Some(format!("messages[{index}]")),
                format!("messages[{index}]: expected an object"),
            ));
        };
        if object.get("role").and_then(Value::as_str) == Some("developer") {
            object.insert("role".into(), Value::from("system"));
        }
        let parsed: WireMessage = serde_json::from_value(message).map_err(|e| {
            OpenAiError::bad_request(Some(format!("messages[{index}]")), format!("messages[{index}]: {e}"))
        })?;
        wire.push(parsed);
    }
    messages_from_wire(wire)
        .map_err(|e| OpenAiError::bad_request(Some(e.field.clone()), format!("{}: {}", e.field, e.reason)))
}

/// For `required` and named tool choices: the text forced at the start of the reply and the
/// grammar the rest is decoded in (one offered tool's call, arguments matching its schema).
fn forced_call(mode: &ToolMode, tools: &[Value], style: CallStyle) -> Option<(String, Grammar)> {
    let named = match mode {
        ToolMode::Required => None,
        ToolMode::Named(name) => Some(name.as_str()),
        ToolMode::None | ToolMode::Auto => return None,
    };
    let schemas = Grammar::schemas_of(tools);
    Some((style.forced_prefix(named), Grammar::tool_call(&schemas, named, style)))
}

/// One chat request, ready to decode.
struct Prepared {
    model: Arc<ServedModel>,
    prompt_ids: Vec<u32>,
    sampling: Sampling,
    parser: ReplyParser,
    /// Text forced at the start of the reply (already fed to the parser).
    forced: String,
    stream: bool,
    include_usage: bool,
    return_token_ids: bool,
    logprobs: bool,
    /// Set when the server records served conversations (`--record-traces`).
    recorder: Option<Recorder>,
}

async fn prepare(state: &AppState, request: ChatCompletionRequest) -> Result<Prepared, OpenAiError> {
    check_common(request.temperature, request.top_p, request.n)?;
    let tools = request.tools.clone().unwrap_or_default();
    check_tools(&tools)?;
    let mode = tool_mode(&request, &tools)?;
    let messages = messages(&request.messages)?;
    check_sequence(&messages)?;
    let json_grammar = response_format(request.response_format.as_ref())?;
    let stop = stop_list(&request.stop)?;
    if request.top_logprobs.is_some_and(|n| n > 20) {
        return Err(OpenAiError::bad_request(Some("top_logprobs".into()), "top_logprobs: at most 20"));
    }
    let model = served_model(state, request.model.as_deref()).await?;
    let offered: &[Value] = if mode == ToolMode::None { &[] } else { &tools };
    let template = &model.template;
    let mut prompt = template
        .render(&messages, offered, true)
        .map_err(|e| OpenAiError::bad_request(Some("messages".into()), e.to_string()))?;
    let style = CallStyle::of(template);
    let (forced, grammar) = match forced_call(&mode, &tools, style) {
        Some((prefix, grammar)) => (prefix, Some(grammar)),
        // `auto`: each call the model opens is decoded in the tools' grammar (JSON content,
        // when asked for, takes precedence).
        None if mode == ToolMode::Auto && json_grammar.is_none() => {
            (String::new(), Grammar::lazy_tool_calls(&Grammar::schemas_of(&tools), style))
        }
        None => (String::new(), json_grammar),
    };
    prompt.push_str(&forced);
    let prompt_ids = tokenize(&model, &prompt)?;
    let max_tokens =
        max_new_tokens(request.max_completion_tokens.or(request.max_tokens), 4096, prompt_ids.len(), &model)?;
    let recorder = Recorder::new(state, &messages, offered, &model);
    let mut parser = ReplyParser::new(template, mode != ToolMode::None);
    let early = parser.push(&forced);
    debug_assert!(early.is_empty(), "a forced tool-call prefix is never content");
    Ok(Prepared {
        sampling: Sampling {
            max_tokens,
            temperature: request.temperature.unwrap_or(0.0),
            top_p: request.top_p.unwrap_or(1.0),
            seed: request.seed.unwrap_or(0),
            stop,
            logprobs: request.logprobs.then(|| request.top_logprobs.unwrap_or(0) as usize),
            grammar: grammar.map(Arc::new),
        },
        model,
        prompt_ids,
        parser,
        forced,
        stream: request.stream,
        include_usage: request.stream_options.as_ref().is_some_and(|o| o.include_usage),
        return_token_ids: request.return_token_ids,
        logprobs: request.logprobs,
        recorder,
    })
}

// ---------------------------------------------------------------------------------------------
// The endpoint

/// A chat completion: the reply with tool calls parsed, streamed or whole.
#[utoipa::path(
    post,
    path = "/v1/chat/completions",
    tag = "openai",
    request_body = ChatCompletionRequest,
    responses(
        (status = 200, description = "chat.completion; streamed: SSE chat.completion.chunk events, then data: [DONE]",
            content((ChatCompletion = "application/json"), (ChatCompletionChunk = "text/event-stream"))),
        (status = 400, body = OpenAiErrorBody),
        (status = 401, body = OpenAiErrorBody),
        (status = 404, body = OpenAiErrorBody),
        (status = 429, body = OpenAiErrorBody),
        (status = 500, body = OpenAiErrorBody)
    )
)]
pub async fn chat_completions(state: web::Data<AppState>, body: web::Bytes) -> Result<HttpResponse, OpenAiError> {
    let started = Instant::now();
    let metrics = Arc::clone(&state.serving.metrics);
    let result = chat_inner(&state, &body, started).await;
    metrics.request(
        "chat",
        result.as_ref().map_or_else(|e| e.status.as_u16(), |r| r.status().as_u16()),
        started.elapsed().as_secs_f64(),
    );
    result
}

async fn chat_inner(state: &AppState, body: &[u8], started: Instant) -> Result<HttpResponse, OpenAiError> {
    let request: ChatCompletionRequest = parse_body(body)?;
    let prepared = prepare(state, request).await?;
    let events = state.serving.decoders.submit(
        Arc::clone(&prepared.model),
        prepared.prompt_ids.clone(),
        prepared.sampling.clone(),
    )?;
    if prepared.stream {
        let model = Arc::clone(&prepared.model);
        return Ok(sse::response(&model, stream(prepared, events, Arc::clone(&state.serving.metrics), started)));
    }
    let Prepared { model, mut parser, forced, return_token_ids, logprobs, recorder, .. } = prepared;
    let mut replies = Vec::new();
    let mut text = forced;
    let outcome = drain(events, &mut parser, &mut replies, &mut text).await?;
    state.serving.metrics.tokens(outcome.prompt_tokens, outcome.completion_tokens, None);
    let (content, calls) = crate::model::reply::collect(replies);
    let tool_calls: Vec<ToolCall> = calls.iter().map(ToolCall::new).collect();
    let finish_reason = FinishReason::of(outcome.finish, !tool_calls.is_empty());
    if let Some(recorder) = recorder {
        recorder.finish(content.clone(), &tool_calls, finish_reason);
    }
    let choice = ChatChoice {
        index: 0,
        message: ChatMessage::assistant(content, tool_calls),
        logprobs: logprobs.then(|| ChatLogprobs::new(&outcome.logprobs)),
        finish_reason,
        token_ids: return_token_ids.then_some(outcome.token_ids),
    };
    let usage = Usage::new(outcome.prompt_tokens, outcome.completion_tokens);
    Ok(reply(&model, &ChatCompletion::new(&model, choice, usage)))
}

/// What a finished decode produced.
struct Outcome {
    token_ids: Vec<u32>,
    logprobs: Vec<TokenLogprob>,
    finish: Finish,
    prompt_tokens: usize,
    completion_tokens: usize,
}

async fn drain(
    mut events: UnboundedReceiver<Event>,
    parser: &mut ReplyParser,
    replies: &mut Vec<ReplyEvent>,
    text: &mut String,
) -> Result<Outcome, OpenAiError> {
    let mut outcome = Outcome {
        token_ids: Vec::new(),
        logprobs: Vec::new(),
        finish: Finish::Length,
        prompt_tokens: 0,
        completion_tokens: 0,
    };
    while let Some(event) = events.recv().await {
        match event {
            Event::Token { id, logprob } => {
                outcome.token_ids.push(id);
                outcome.logprobs.extend(logprob);
            }
            Event::Text(piece) => {
                text.push_str(&piece);
                replies.extend(parser.push(&piece));
            }
            Event::Done { finish, prompt_tokens, completion_tokens } => {
                outcome.finish = finish;
                outcome.prompt_tokens = prompt_tokens;
                outcome.completion_tokens = completion_tokens;
                replies.extend(parser.finish());
                return Ok(outcome);
            }
            Event::Failed(detail) => return Err(OpenAiError::internal(detail)),
        }
    }
    Err(OpenAiError::internal(ENGINE_STOPPED))
}

// ---------------------------------------------------------------------------------------------
// Streaming

/// State of one streamed chat completion.
struct ChatStream {
    model: Arc<ServedModel>,
    parser: ReplyParser,
    id: String,
    created: i64,
    tool_index: usize,
    token_ids: Vec<u32>,
    include_usage: bool,
    return_token_ids: bool,
    logprobs: bool,
    metrics: Arc<Metrics>,
    started: Instant,
    first_token: Option<f64>,
    recorder: Option<Recorder>,
    /// The reply so far, for the recorder: its text and its calls as sent.
    content: String,
    calls: Vec<ToolCall>,
}

impl ChatStream {
    fn chunk(&self, choice: ChunkChoice) -> ChatCompletionChunk {
        ChatCompletionChunk::new(&self.id, self.created, &self.model, vec![choice], None)
    }

    fn delta(&self, delta: Delta) -> ChatCompletionChunk {
        self.chunk(ChunkChoice { index: 0, delta, logprobs: None, finish_reason: None, token_ids: None })
    }

    fn replies(&mut self, replies: Vec<ReplyEvent>, outbox: &mut Outbox) {
        for reply in replies {
            let delta = match reply {
                ReplyEvent::Content(text) => {
                    if self.recorder.is_some() {
                        self.content.push_str(&text);
                    }
                    Delta::content(text)
                }
                ReplyEvent::ToolCall(call) => {
                    let call = ToolCall::new(&call);
                    let index = self.tool_index;
                    self.tool_index += 1;
                    // id, type and name once with empty arguments, then the arguments.
                    outbox.push(&self.delta(Delta::tool_call_head(index, &call)));
                    let arguments = call.function.arguments.clone();
                    if self.recorder.is_some() {
                        self.calls.push(call);
                    }
                    Delta::tool_call_arguments(index, arguments)
                }
            };
            outbox.push(&self.delta(delta));
        }
    }
}

impl Relay for ChatStream {
    fn token(&mut self, id: u32, logprob: Option<TokenLogprob>, outbox: &mut Outbox) {
        if self.first_token.is_none() {
            self.first_token = Some(self.started.elapsed().as_secs_f64());
        }
        self.token_ids.push(id);
        if let (true, Some(logprob)) = (self.logprobs, logprob) {
            let logprobs = Some(ChatLogprobs::new([&logprob]));
            outbox.push(&self.chunk(ChunkChoice {
                index: 0,
                delta: Delta::default(),
                logprobs,
                finish_reason: None,
                token_ids: None,
            }));
        }
    }

    fn text(&mut self, piece: String, outbox: &mut Outbox) {
        let replies = self.parser.push(&piece);
        self.replies(replies, outbox);
    }

    fn finish(&mut self, finish: Finish, prompt_tokens: usize, completion_tokens: usize, outbox: &mut Outbox) {
        let replies = self.parser.finish();
        self.replies(replies, outbox);
        self.metrics.tokens(prompt_tokens, completion_tokens, self.first_token);
        let token_ids = self.return_token_ids.then(|| std::mem::take(&mut self.token_ids));
        let finish_reason = FinishReason::of(finish, self.tool_index > 0);
        if let Some(recorder) = self.recorder.take() {
            let content = std::mem::take(&mut self.content);
            recorder.finish((!content.is_empty()).then_some(content), &self.calls, finish_reason);
        }
        outbox.push(&self.chunk(ChunkChoice {
            index: 0,
            delta: Delta::default(),
            logprobs: None,
            finish_reason: Some(finish_reason),
            token_ids,
        }));
        if self.include_usage {
            let usage = Usage::new(prompt_tokens, completion_tokens);
            outbox.push(&ChatCompletionChunk::new(&self.id, self.created, &self.model, Vec::new(), Some(usage)));
        }
    }
}

fn stream(
    prepared: Prepared,
    events: UnboundedReceiver<Event>,
    metrics: Arc<Metrics>,
    started: Instant,
) -> impl futures_util::Stream<Item = Result<web::Bytes, actix_web::Error>> {
    let relay = ChatStream {
        id: new_id("chatcmpl-"),
        created: unix_now(),
        tool_index: 0,
        token_ids: Vec::new(),
        include_usage: prepared.include_usage,
        return_token_ids: prepared.return_token_ids,
        logprobs: prepared.logprobs,
        model: prepared.model,
        parser: prepared.parser,
        metrics,
        started,
        first_token: None,
        recorder: prepared.recorder,
        content: String::new(),
        calls: Vec::new(),
    };
    let mut outbox = Outbox::default();
    outbox.push(&relay.delta(Delta::role()));
    sse::relay(events, relay, outbox)
}
