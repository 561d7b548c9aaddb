//! The OpenAI-compatible surface: `GET /v1/models`, `POST /v1/chat/completions` (tools,
//! tool_choice, streaming exactly as OpenAI streams) and `POST /v1/completions`. Wire types live
//! here and only here; requests become a rendered prompt (the model's own chat template, the
//! one training used), decoding runs on the engine's workers, and replies go through the shared
//! reply parser, so a streamed answer reassembles to the non-streamed one. Errors use OpenAI's
//! envelope `{"error": {"message", "type", "param", "code"}}`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse, ResponseError};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedReceiver;
use utoipa::{OpenApi, ToSchema};

use super::metrics::Metrics;
use super::AppState;
use crate::model::chat_template::TemplateKind;
use crate::model::reply::{ReplyEvent, ReplyParser, ToolCallOut};
use crate::serve::engine::{EngineError, Event, Finish, Sampling, TokenLogprob};
use crate::serve::registry::{self, CatalogEntry, ServedModel};
use crate::traces::wire::{messages_from_wire, WireMessage};
use crate::traces::Message;

#[derive(OpenApi)]
#[openapi(
    paths(list_models, chat_completions, completions),
    components(schemas(
        ModelList,
        ModelCard,
        ChatCompletionRequest,
        CompletionRequest,
        StreamOptions,
        OpenAiErrorBody,
        OpenAiErrorDetail
    ))
)]
pub struct OpenAiDoc;

pub fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/v1/models", web::get().to(list_models))
        .route("/v1/models/{id:.*}", web::get().to(get_model))
        .route("/v1/chat/completions", web::post().to(chat_completions))
        .route("/v1/completions", web::post().to(completions));
}

// ---------------------------------------------------------------------------------------------
// Errors

/// An error in OpenAI's envelope with its status.
#[derive(Debug)]
pub struct OpenAiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
    param: Option<String>,
    code: Option<&'static str>,
    retry_after: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub struct OpenAiErrorBody {
    pub error: OpenAiErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct OpenAiErrorDetail {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub param: Option<String>,
    pub code: Option<String>,
}

impl OpenAiError {
    pub fn bad_request(param: impl Into<Option<String>>, message: impl Into<String>) -> OpenAiError {
        OpenAiError {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            message: message.into(),
            param: param.into(),
            code: None,
            retry_after: None,
        }
    }

    pub fn unauthorized() -> OpenAiError {
        OpenAiError {
            status: StatusCode::UNAUTHORIZED,
            kind: "invalid_request_error",
            message: "a valid API key is required (Authorization: Bearer ...)".into(),
            param: None,
            code: Some("invalid_api_key"),
            retry_after: None,
        }
    }

    fn model_not_found(model: &str, catalog: &[CatalogEntry]) -> OpenAiError {
        let served: Vec<&str> = catalog.iter().map(|e| e.name.as_str()).collect();
        let message = if served.is_empty() {
            format!("the model {model:?} does not exist: no model is served yet (train and export one first)")
        } else {
            format!(
                "the model {model:?} does not exist; served models: understudy (the champion), {}",
                served.join(", ")
            )
        };
        OpenAiError {
            status: StatusCode::NOT_FOUND,
            kind: "invalid_request_error",
            message,
            param: Some("model".into()),
            code: Some("model_not_found"),
            retry_after: None,
        }
    }

    fn overloaded(message: String) -> OpenAiError {
        OpenAiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            kind: "rate_limit_error",
            message,
            param: None,
            code: Some("rate_limit_exceeded"),
            retry_after: Some(1),
        }
    }

    fn internal(message: impl std::fmt::Display) -> OpenAiError {
        tracing::error!("openai endpoint: {message}");
        OpenAiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            kind: "server_error",
            message: message.to_string(),
            param: None,
            code: None,
            retry_after: None,
        }
    }

    fn body(&self) -> OpenAiErrorBody {
        OpenAiErrorBody {
            error: OpenAiErrorDetail {
                message: self.message.clone(),
                kind: self.kind.into(),
                param: self.param.clone(),
                code: self.code.map(str::to_string),
            },
        }
    }
}

impl std::fmt::Display for OpenAiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl ResponseError for OpenAiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        if let Some(seconds) = self.retry_after {
            response.insert_header(("Retry-After", seconds.to_string()));
        }
        response.json(self.body())
    }
}

impl From<super::WebError> for OpenAiError {
    fn from(error: super::WebError) -> Self {
        OpenAiError::internal(error)
    }
}

impl From<EngineError> for OpenAiError {
    fn from(error: EngineError) -> Self {
        match error {
            EngineError::Overloaded { .. } => OpenAiError::overloaded(error.to_string()),
            EngineError::Stopped => OpenAiError::internal(error),
        }
    }
}

/// Parse a JSON body, naming the field a type error is at.
fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, OpenAiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        let param = (path != ".").then_some(path.clone());
        OpenAiError::bad_request(param, format!("invalid request body at {path}: {}", e.inner()))
    })
}

// ---------------------------------------------------------------------------------------------
// Models

#[derive(Serialize, ToSchema)]
pub struct ModelList {
    pub object: &'static str,
    pub data: Vec<ModelCard>,
}

#[derive(Serialize, ToSchema)]
pub struct ModelCard {
    pub id: String,
    pub object: &'static str,
    pub created: i64,
    pub owned_by: &'static str,
    /// The export (or model) id this name serves now.
    pub version: String,
    /// Answers to `understudy` and `default` too.
    pub champion: bool,
}

fn card(entry: &CatalogEntry) -> ModelCard {
    ModelCard {
        id: entry.name.clone(),
        object: "model",
        created: entry.created,
        owned_by: "understudy",
        version: entry.version.clone(),
        champion: entry.champion,
    }
}

async fn catalog(state: &AppState) -> Result<Vec<CatalogEntry>, OpenAiError> {
    let (exports, models) = state.with_db(|db| Ok((db.list_exports()?, db.list_models()?))).await?;
    Ok(registry::catalog(&exports, &models))
}

/// The served models, the champion first.
#[utoipa::path(get, path = "/v1/models", tag = "openai", responses((status = 200, body = ModelList)))]
pub async fn list_models(state: web::Data<AppState>) -> Result<HttpResponse, OpenAiError> {
    let catalog = catalog(&state).await?;
    Ok(HttpResponse::Ok().json(ModelList { object: "list", data: catalog.iter().map(card).collect() }))
}

pub async fn get_model(state: web::Data<AppState>, id: web::Path<String>) -> Result<HttpResponse, OpenAiError> {
    let catalog = catalog(&state).await?;
    let entry = registry::resolve(&catalog, &id).ok_or_else(|| OpenAiError::model_not_found(&id, &catalog))?;
    Ok(HttpResponse::Ok().json(card(entry)))
}

/// The model a request names, loaded (off the async workers).
async fn served_model(state: &AppState, requested: Option<&str>) -> Result<Arc<ServedModel>, OpenAiError> {
    let catalog = catalog(state).await?;
    let requested = requested.unwrap_or("understudy");
    let entry = registry::resolve(&catalog, requested)
        .cloned()
        .ok_or_else(|| OpenAiError::model_not_found(requested, &catalog))?;
    let registry = Arc::clone(&state.serving.registry);
    web::block(move || registry.get(&entry)).await.map_err(OpenAiError::internal)?.map_err(OpenAiError::internal)
}

// ---------------------------------------------------------------------------------------------
// Requests

#[derive(Debug, Deserialize, ToSchema)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// `POST /v1/chat/completions`. Unknown fields are ignored.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ChatCompletionRequest {
    /// A served model name, a version, or `understudy` (the champion; the default).
    #[serde(default)]
    pub model: Option<String>,
    #[schema(value_type = Vec<Object>)]
    pub messages: Vec<Value>,
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    pub tools: Option<Vec<Value>>,
    /// `none`, `auto`, `required` or `{"type": "function", "function": {"name": ...}}`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub tool_choice: Option<Value>,
    /// Default 0 (the served models are tuned for deterministic tool calls).
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub max_tokens: Option<u64>,
    #[serde(default)]
    pub max_completion_tokens: Option<u64>,
    /// A string or up to 4 strings.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub stop: Option<Value>,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub n: Option<u64>,
    #[serde(default)]
    pub stream: bool,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub logprobs: bool,
    #[serde(default)]
    pub top_logprobs: Option<u64>,
    /// Understudy extension: also return the generated token ids (`choices[].token_ids`).
    #[serde(default)]
    pub return_token_ids: bool,
}

/// `POST /v1/completions` (legacy). Unknown fields are ignored.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CompletionRequest {
    #[serde(default)]
    pub model: Option<String>,
    /// A string, a list with one string, or token ids.
    #[schema(value_type = Object)]
    pub prompt: Value,
    #[serde(default)]
    pub max_tokens: Option<u64>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub stop: Option<Value>,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub n: Option<u64>,
    #[serde(default)]
    pub stream: bool,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub logprobs: Option<u64>,
    #[serde(default)]
    pub echo: bool,
    #[serde(default)]
    pub return_token_ids: bool,
}

fn stop_list(stop: &Option<Value>) -> Result<Vec<String>, OpenAiError> {
    let list = match stop {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(text)) => vec![text.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| {
                item.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| OpenAiError::bad_request(Some("stop".into()), "stop: every entry must be a string"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(OpenAiError::bad_request(Some("stop".into()), "stop: expected a string or a list of strings"))
        }
    };
    if list.len() > 4 {
        return Err(OpenAiError::bad_request(Some("stop".into()), "stop: at most 4 sequences"));
    }
    Ok(list.into_iter().filter(|s| !s.is_empty()).collect())
}

fn check_common(temperature: Option<f64>, top_p: Option<f64>, n: Option<u64>) -> Result<(), OpenAiError> {
    if let Some(t) = temperature {
        if !(0.0..=2.0).contains(&t) {
            return Err(OpenAiError::bad_request(
                Some("temperature".into()),
                format!("temperature: {t} is not between 0 and 2"),
            ));
        }
    }
    if let Some(p) = top_p {
        if !(p > 0.0 && p <= 1.0) {
            return Err(OpenAiError::bad_request(Some("top_p".into()), format!("top_p: {p} is not in (0, 1]")));
        }
    }
    if n.is_some_and(|n| n != 1) {
        return Err(OpenAiError::bad_request(Some("n".into()), "n: only n=1 is supported"));
    }
    Ok(())
}

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
    }
    Ok(())
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
            object.insert("role".into(), json!("system"));
        }
        let parsed: WireMessage = serde_json::from_value(message).map_err(|e| {
            OpenAiError::bad_request(Some(format!("messages[{index}]")), format!("messages[{index}]: {e}"))
        })?;
        wire.push(parsed);
    }
    messages_from_wire(wire)
        .map_err(|e| OpenAiError::bad_request(Some(e.field.clone()), format!("{}: {}", e.field, e.reason)))
}

/// Text forced at the start of the reply for `required` and named tool choices. It ends at a
/// pre-tokenizer boundary (after `":`), so the tokens the model continues with are the ones
/// it was trained on.
fn forced_prefix(mode: &ToolMode, kind: TemplateKind, source: &str) -> String {
    let llama =
        kind == TemplateKind::Llama3 || (kind == TemplateKind::Custom && source.contains("<|start_header_id|>"));
    match (mode, llama) {
        (ToolMode::Required, false) => "<tool_call>\n{\"name\":".into(),
        (ToolMode::Required, true) => "{\"name\":".into(),
        (ToolMode::Named(name), false) => format!("<tool_call>\n{{\"name\": \"{name}\", \"arguments\":"),
        (ToolMode::Named(name), true) => format!("{{\"name\": \"{name}\", \"parameters\":"),
        _ => String::new(),
    }
}

fn tokenize(model: &ServedModel, text: &str) -> Result<Vec<u32>, OpenAiError> {
    model
        .tokenizer
        .encode(text, false)
        .map(|e| e.get_ids().to_vec())
        .map_err(|e| OpenAiError::internal(format!("tokenizer: {e}")))
}

fn max_new_tokens(
    requested: Option<u64>,
    default: usize,
    prompt: usize,
    model: &ServedModel,
) -> Result<usize, OpenAiError> {
    let context = model.context_length;
    if prompt >= context {
        return Err(OpenAiError {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            message: format!("the prompt is {prompt} tokens; this model's maximum context length is {context} tokens"),
            param: Some("messages".into()),
            code: Some("context_length_exceeded"),
            retry_after: None,
        });
    }
    Ok(requested.map_or(default, |n| n as usize).min(context - prompt))
}

// ---------------------------------------------------------------------------------------------
// Responses

fn new_id(prefix: &str) -> String {
    format!("{prefix}{}", ulid::Ulid::new().to_string().to_lowercase())
}

fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

#[derive(Serialize, Clone)]
struct FunctionOut {
    name: String,
    arguments: String,
}

#[derive(Serialize, Clone)]
struct ToolCallWire {
    id: String,
    #[serde(rename = "type")]
    kind: &'static str,
    function: FunctionOut,
}

fn tool_call_wire(call: &ToolCallOut) -> ToolCallWire {
    ToolCallWire {
        id: new_id("call_"),
        kind: "function",
        function: FunctionOut { name: call.name.clone(), arguments: call.arguments.clone() },
    }
}

fn logprob_wire(logprob: &TokenLogprob) -> Value {
    json!({
        "token": logprob.token,
        "logprob": logprob.logprob,
        "bytes": logprob.token.as_bytes(),
        "top_logprobs": logprob.top.iter().map(|(t, l)| json!({"token": t, "logprob": l, "bytes": t.as_bytes()})).collect::<Vec<_>>(),
    })
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
            Event::Failed(message) => return Err(OpenAiError::internal(message)),
        }
    }
    Err(OpenAiError::internal("the engine stopped before the reply finished"))
}

fn finish_reason(finish: Finish, has_calls: bool) -> &'static str {
    match (finish, has_calls) {
        (_, true) => "tool_calls",
        (Finish::Stop, false) => "stop",
        (Finish::Length, false) => "length",
    }
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
}

async fn prepare_chat(state: &AppState, request: ChatCompletionRequest) -> Result<Prepared, OpenAiError> {
    check_common(request.temperature, request.top_p, request.n)?;
    let tools = request.tools.clone().unwrap_or_default();
    check_tools(&tools)?;
    let mode = tool_mode(&request, &tools)?;
    let messages = messages(&request.messages)?;
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
    let forced = forced_prefix(&mode, template.kind, &template.source);
    prompt.push_str(&forced);
    let prompt_ids = tokenize(&model, &prompt)?;
    let max_tokens =
        max_new_tokens(request.max_completion_tokens.or(request.max_tokens), 4096, prompt_ids.len(), &model)?;
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
        },
        model,
        prompt_ids,
        parser,
        forced,
        stream: request.stream,
        include_usage: request.stream_options.as_ref().is_some_and(|o| o.include_usage),
        return_token_ids: request.return_token_ids,
        logprobs: request.logprobs,
    })
}

/// A chat completion: the reply with tool calls parsed, streamed or whole.
#[utoipa::path(
    post,
    path = "/v1/chat/completions",
    tag = "openai",
    request_body = ChatCompletionRequest,
    responses(
        (status = 200, description = "chat.completion, or an SSE stream of chat.completion.chunk ending with data: [DONE]"),
        (status = 400, body = OpenAiErrorBody), (status = 401, body = OpenAiErrorBody), (status = 404, body = OpenAiErrorBody),
        (status = 429, body = OpenAiErrorBody), (status = 500, body = OpenAiErrorBody)
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
    let prepared = prepare_chat(state, request).await?;
    let events = state.serving.engine.submit(
        Arc::clone(&prepared.model),
        prepared.prompt_ids.clone(),
        prepared.sampling.clone(),
    )?;
    if prepared.stream {
        let model = Arc::clone(&prepared.model);
        return Ok(sse(&model, chat_stream(prepared, events, Arc::clone(&state.serving.metrics), started)));
    }
    let Prepared { model, mut parser, forced, return_token_ids, logprobs, .. } = prepared;
    let mut replies = Vec::new();
    let mut text = forced;
    let outcome = drain(events, &mut parser, &mut replies, &mut text).await?;
    state.serving.metrics.tokens(outcome.prompt_tokens, outcome.completion_tokens, None);
    let (content, calls) = crate::model::reply::collect(replies);
    let tool_calls: Vec<ToolCallWire> = calls.iter().map(tool_call_wire).collect();
    let mut message = json!({"role": "assistant", "content": content, "refusal": null});
    if !tool_calls.is_empty() {
        message["tool_calls"] = json!(tool_calls);
    }
    let mut choice = json!({
        "index": 0,
        "message": message,
        "logprobs": if logprobs { json!({"content": outcome.logprobs.iter().map(logprob_wire).collect::<Vec<_>>()}) } else { Value::Null },
        "finish_reason": finish_reason(outcome.finish, !tool_calls.is_empty()),
    });
    if return_token_ids {
        choice["token_ids"] = json!(outcome.token_ids);
    }
    let [version, runtime] = served_by(&model);
    Ok(HttpResponse::Ok().insert_header(version).insert_header(runtime).json(json!({
        "id": new_id("chatcmpl-"),
        "object": "chat.completion",
        "created": unix_now(),
        "model": model.name,
        "system_fingerprint": model.version,
        "choices": [choice],
        "usage": {"prompt_tokens": outcome.prompt_tokens, "completion_tokens": outcome.completion_tokens, "total_tokens": outcome.prompt_tokens + outcome.completion_tokens},
    })))
}

/// The headers every reply carries: which version answered and what ran it.
fn served_by(model: &ServedModel) -> [(&'static str, String); 2] {
    [("x-understudy-model-version", model.version.clone()), ("x-understudy-runtime", model.runtime.label().to_string())]
}

fn sse(
    model: &ServedModel,
    stream: impl futures_util::Stream<Item = Result<web::Bytes, actix_web::Error>> + 'static,
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

fn event_bytes(value: &Value) -> web::Bytes {
    web::Bytes::from(format!("data: {value}\n\n"))
}

/// State of one streamed chat completion.
struct ChatStream {
    events: UnboundedReceiver<Event>,
    model: Arc<ServedModel>,
    parser: ReplyParser,
    id: String,
    created: i64,
    queue: VecDeque<web::Bytes>,
    tool_index: usize,
    token_ids: Vec<u32>,
    include_usage: bool,
    return_token_ids: bool,
    logprobs: bool,
    done: bool,
    metrics: Arc<Metrics>,
    started: Instant,
    first_token: Option<f64>,
}

impl ChatStream {
    fn chunk(&self, delta: Value, finish: Option<&str>, logprobs: Value) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model.name,
            "system_fingerprint": self.model.version,
            "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}],
        })
    }

    fn replies(&mut self, replies: Vec<ReplyEvent>) {
        for reply in replies {
            let delta = match reply {
                ReplyEvent::Content(text) => json!({"content": text}),
                ReplyEvent::ToolCall(call) => {
                    let wire = tool_call_wire(&call);
                    let index = self.tool_index;
                    self.tool_index += 1;
                    // id, type and name once with empty arguments, then the arguments.
                    let head = json!({"tool_calls": [{"index": index, "id": wire.id, "type": "function", "function": {"name": wire.function.name, "arguments": ""}}]});
                    let head = self.chunk(head, None, Value::Null);
                    self.queue.push_back(event_bytes(&head));
                    json!({"tool_calls": [{"index": index, "function": {"arguments": wire.function.arguments}}]})
                }
            };
            let chunk = self.chunk(delta, None, Value::Null);
            self.queue.push_back(event_bytes(&chunk));
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Token { id, logprob } => {
                if self.first_token.is_none() {
                    self.first_token = Some(self.started.elapsed().as_secs_f64());
                }
                self.token_ids.push(id);
                if let (true, Some(logprob)) = (self.logprobs, logprob) {
                    let chunk = self.chunk(json!({}), None, json!({"content": [logprob_wire(&logprob)]}));
                    self.queue.push_back(event_bytes(&chunk));
                }
            }
            Event::Text(piece) => {
                let replies = self.parser.push(&piece);
                self.replies(replies);
            }
            Event::Done { finish, prompt_tokens, completion_tokens } => {
                let replies = self.parser.finish();
                self.replies(replies);
                self.metrics.tokens(prompt_tokens, completion_tokens, self.first_token);
                let mut last = self.chunk(json!({}), Some(finish_reason(finish, self.tool_index > 0)), Value::Null);
                if self.return_token_ids {
                    last["choices"][0]["token_ids"] = json!(self.token_ids);
                }
                self.queue.push_back(event_bytes(&last));
                if self.include_usage {
                    let usage = json!({
                        "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model.name,
                        "system_fingerprint": self.model.version, "choices": [],
                        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens},
                    });
                    self.queue.push_back(event_bytes(&usage));
                }
                self.queue.push_back(web::Bytes::from_static(b"data: [DONE]\n\n"));
                self.done = true;
            }
            Event::Failed(message) => {
                tracing::error!("stream failed: {message}");
                let error = json!({"error": {"message": message, "type": "server_error", "param": null, "code": null}});
                self.queue.push_back(event_bytes(&error));
                self.done = true;
            }
        }
    }
}

fn chat_stream(
    prepared: Prepared,
    events: UnboundedReceiver<Event>,
    metrics: Arc<Metrics>,
    started: Instant,
) -> impl futures_util::Stream<Item = Result<web::Bytes, actix_web::Error>> {
    let mut state = ChatStream {
        events,
        id: new_id("chatcmpl-"),
        created: unix_now(),
        queue: VecDeque::new(),
        tool_index: 0,
        token_ids: Vec::new(),
        include_usage: prepared.include_usage,
        return_token_ids: prepared.return_token_ids,
        logprobs: prepared.logprobs,
        done: false,
        model: prepared.model,
        parser: prepared.parser,
        metrics,
        started,
        first_token: None,
    };
    let first = state.chunk(json!({"role": "assistant", "content": ""}), None, Value::Null);
    state.queue.push_back(event_bytes(&first));
    futures_util::stream::unfold(state, |mut state| async move {
        loop {
            if let Some(bytes) = state.queue.pop_front() {
                return Some((Ok(bytes), state));
            }
            if state.done {
                return None;
            }
            match state.events.recv().await {
                Some(event) => state.handle(event),
                None => state.handle(Event::Failed("the engine stopped before the reply finished".into())),
            }
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Legacy completions

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
    responses((status = 200, description = "text_completion, or an SSE stream ending with data: [DONE]"), (status = 400, body = OpenAiErrorBody), (status = 404, body = OpenAiErrorBody))
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
    };
    let prompt_tokens = ids.len();
    let mut events = state.serving.engine.submit(Arc::clone(&model), ids, sampling)?;
    let id = new_id("cmpl-");
    let created = unix_now();
    let echo = if request.echo { prompt_text } else { String::new() };
    if request.stream {
        let include_usage = request.stream_options.as_ref().is_some_and(|o| o.include_usage);
        let metrics = Arc::clone(&state.serving.metrics);
        let served = Arc::clone(&model);
        let chunk = move |text: &str, finish: Option<&str>| {
            event_bytes(
                &json!({"id": id, "object": "text_completion", "created": created, "model": model.name, "system_fingerprint": model.version, "choices": [{"text": text, "index": 0, "logprobs": null, "finish_reason": finish}]}),
            )
        };
        let stream = async_stream_completion(events, chunk, echo, include_usage, prompt_tokens, metrics);
        return Ok(sse(&served, stream));
    }
    let mut text = echo;
    let mut tokens = Vec::new();
    let mut logprobs = Vec::new();
    let (finish, completion_tokens) = loop {
        match events.recv().await {
            Some(Event::Token { id, logprob }) => {
                tokens.push(id);
                logprobs.extend(logprob);
            }
            Some(Event::Text(piece)) => text.push_str(&piece),
            Some(Event::Done { finish, completion_tokens, .. }) => break (finish, completion_tokens),
            Some(Event::Failed(message)) => return Err(OpenAiError::internal(message)),
            None => return Err(OpenAiError::internal("the engine stopped before the reply finished")),
        }
    };
    state.serving.metrics.tokens(prompt_tokens, completion_tokens, None);
    let logprobs = request.logprobs.map(|_| {
        json!({
            "tokens": logprobs.iter().map(|l| l.token.clone()).collect::<Vec<_>>(),
            "token_logprobs": logprobs.iter().map(|l| l.logprob).collect::<Vec<_>>(),
            "top_logprobs": logprobs.iter().map(|l| l.top.iter().map(|(t, p)| (t.clone(), json!(p))).collect::<serde_json::Map<_, _>>()).collect::<Vec<_>>(),
        })
    });
    let mut choice = json!({"text": text, "index": 0, "logprobs": logprobs, "finish_reason": if finish == Finish::Stop { "stop" } else { "length" }});
    if request.return_token_ids {
        choice["token_ids"] = json!(tokens);
    }
    let [version, runtime] = served_by(&model);
    Ok(HttpResponse::Ok().insert_header(version).insert_header(runtime).json(json!({
        "id": id, "object": "text_completion", "created": created, "model": model.name, "system_fingerprint": model.version,
        "choices": [choice],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens},
    })))
}

fn async_stream_completion(
    events: UnboundedReceiver<Event>,
    chunk: impl Fn(&str, Option<&str>) -> web::Bytes + 'static,
    echo: String,
    include_usage: bool,
    prompt_tokens: usize,
    metrics: Arc<Metrics>,
) -> impl futures_util::Stream<Item = Result<web::Bytes, actix_web::Error>> {
    let mut queue = VecDeque::new();
    if !echo.is_empty() {
        queue.push_back(chunk(&echo, None));
    }
    futures_util::stream::unfold((events, queue, false, chunk), move |(mut events, mut queue, mut done, chunk)| {
        let metrics = Arc::clone(&metrics);
        async move {
            loop {
                if let Some(bytes) = queue.pop_front() {
                    return Some((Ok(bytes), (events, queue, done, chunk)));
                }
                if done {
                    return None;
                }
                match events.recv().await {
                    Some(Event::Text(piece)) if !piece.is_empty() => queue.push_back(chunk(&piece, None)),
                    Some(Event::Text(_)) | Some(Event::Token { .. }) => {}
                    Some(Event::Done { finish, completion_tokens, .. }) => {
                        metrics.tokens(prompt_tokens, completion_tokens, None);
                        queue.push_back(chunk("", Some(if finish == Finish::Stop { "stop" } else { "length" })));
                        if include_usage {
                            let usage = json!({"object": "text_completion", "choices": [], "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}});
                            queue.push_back(event_bytes(&usage));
                        }
                        queue.push_back(web::Bytes::from_static(b"data: [DONE]\n\n"));
                        done = true;
                    }
                    Some(Event::Failed(message)) => {
                        queue.push_back(event_bytes(&json!({"error": {"message": message, "type": "server_error", "param": null, "code": null}})));
                        done = true;
                    }
                    None => {
                        queue.push_back(event_bytes(&json!({"error": {"message": "the engine stopped before the reply finished", "type": "server_error", "param": null, "code": null}})));
                        done = true;
                    }
                }
            }
        }
    })
}
