//! The OpenAI-compatible surface: `GET /v1/models`, `POST /v1/chat/completions` (tools,
//! tool_choice, streaming exactly as OpenAI streams) and `POST /v1/completions`. This module
//! owns the route table, the OpenAPI document of those routes, the one error type
//! ([`OpenAiError`], rendered in OpenAI's envelope `{"error": {"message", "type", "param",
//! "code"}}`, and never carrying internal detail to a client), and what both endpoints share:
//! body parsing and validation, the model lookup, tokenization, ids and the reply headers. The
//! wire types are in `wire`, the endpoints in `chat` and `completions`, SSE framing in `sse`, recording served
//! conversations as traces (`--record-traces`) in `record`.

mod chat;
mod completions;
mod record;
mod sse;
mod wire;

use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse, ResponseError};
use serde::Serialize;
use serde_json::Value;
use utoipa::OpenApi;

use self::wire::{
    ChatChoice, ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, ChatLogprobs, ChatMessage,
    ChatTokenLogprob, ChunkChoice, Completion, CompletionChoice, CompletionChunk, CompletionLogprobs,
    CompletionRequest, Delta, FinishReason, FunctionCall, FunctionDelta, ModelCard, ModelList, OpenAiErrorBody,
    OpenAiErrorDetail, StreamOptions, ToolCall, ToolCallDelta, TopLogprob, Usage,
};
use crate::serve::decode::DecodeError;
use crate::serve::registry::{self, CatalogEntry, ServedModel};
use crate::web::AppState;

#[derive(OpenApi)]
#[openapi(
    paths(list_models, chat::chat_completions, completions::completions),
    components(schemas(
        ModelList,
        ModelCard,
        ChatCompletionRequest,
        CompletionRequest,
        StreamOptions,
        ChatCompletion,
        ChatChoice,
        ChatMessage,
        ToolCall,
        FunctionCall,
        ChatLogprobs,
        ChatTokenLogprob,
        TopLogprob,
        ChatCompletionChunk,
        ChunkChoice,
        Delta,
        ToolCallDelta,
        FunctionDelta,
        Completion,
        CompletionChunk,
        CompletionChoice,
        CompletionLogprobs,
        FinishReason,
        Usage,
        OpenAiErrorBody,
        OpenAiErrorDetail
    ))
)]
pub struct OpenAiDoc;

pub fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/v1/models", web::get().to(list_models))
        .route("/v1/models/{id:.*}", web::get().to(get_model))
        .route("/v1/chat/completions", web::post().to(chat::chat_completions))
        .route("/v1/completions", web::post().to(completions::completions));
}

// ---------------------------------------------------------------------------------------------
// Errors

/// What a client is told when something failed on the server's side; the detail is logged.
const INTERNAL_MESSAGE: &str = "internal error; see the server log";

/// The detail logged when the decode workers drop a request before its `Done`.
const ENGINE_STOPPED: &str = "the engine stopped before the reply finished";

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

    pub fn forbidden(message: String) -> OpenAiError {
        OpenAiError {
            status: StatusCode::FORBIDDEN,
            kind: "permission_error",
            message,
            param: None,
            code: None,
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

    fn context_length_exceeded(prompt: usize, context: usize) -> OpenAiError {
        OpenAiError {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            message: format!("the prompt is {prompt} tokens; this model's maximum context length is {context} tokens"),
            param: Some("messages".into()),
            code: Some("context_length_exceeded"),
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

    /// A failure on the server's side: `detail` goes to the log, the client gets a generic message.
    fn internal(detail: impl std::fmt::Display) -> OpenAiError {
        OpenAiError::server_error(INTERNAL_MESSAGE.into(), detail)
    }

    /// A served model that would not load: the client learns which, the log learns why (the
    /// loader's errors name files on this machine).
    fn load_failed(model: &str, detail: impl std::fmt::Display) -> OpenAiError {
        OpenAiError::server_error(format!("the model {model:?} could not be loaded; see the server log"), detail)
    }

    fn server_error(message: String, detail: impl std::fmt::Display) -> OpenAiError {
        tracing::error!("openai endpoint: {detail:#}");
        OpenAiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            kind: "server_error",
            message,
            param: None,
            code: None,
            retry_after: None,
        }
    }

    /// The envelope this error is sent in, as a JSON body or an SSE event. The only place one is built.
    fn envelope(&self) -> OpenAiErrorBody {
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
        response.json(self.envelope())
    }
}

impl From<crate::web::WebError> for OpenAiError {
    fn from(error: crate::web::WebError) -> Self {
        OpenAiError::internal(error)
    }
}

impl From<DecodeError> for OpenAiError {
    fn from(error: DecodeError) -> Self {
        match error {
            DecodeError::Overloaded { .. } => OpenAiError::overloaded(error.to_string()),
            DecodeError::Stopped => OpenAiError::internal(error),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Validation shared by both endpoints

/// Parse a JSON body, naming the field a type error is at.
fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, OpenAiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        let param = (path != ".").then_some(path.clone());
        OpenAiError::bad_request(param, format!("invalid request body at {path}: {}", e.inner()))
    })
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

// ---------------------------------------------------------------------------------------------
// Models

async fn catalog(state: &AppState) -> Result<Vec<CatalogEntry>, OpenAiError> {
    let (exports, models) = state.with_db(|db| Ok((db.list_exports()?, db.list_models()?))).await?;
    Ok(registry::catalog(&exports, &models))
}

/// The served models, the champion first.
#[utoipa::path(
    get,
    path = "/v1/models",
    tag = "openai",
    responses(
        (status = 200, body = ModelList),
        (status = 401, body = OpenAiErrorBody),
        (status = 500, body = OpenAiErrorBody)
    )
)]
pub async fn list_models(state: web::Data<AppState>) -> Result<HttpResponse, OpenAiError> {
    let catalog = catalog(&state).await?;
    Ok(HttpResponse::Ok().json(ModelList::new(catalog.iter().map(ModelCard::new).collect())))
}

pub async fn get_model(state: web::Data<AppState>, id: web::Path<String>) -> Result<HttpResponse, OpenAiError> {
    let catalog = catalog(&state).await?;
    let entry = registry::resolve(&catalog, &id).ok_or_else(|| OpenAiError::model_not_found(&id, &catalog))?;
    Ok(HttpResponse::Ok().json(ModelCard::new(entry)))
}

/// The model a request names, loaded (off the async workers).
async fn served_model(state: &AppState, requested: Option<&str>) -> Result<Arc<ServedModel>, OpenAiError> {
    let catalog = catalog(state).await?;
    let requested = requested.unwrap_or("understudy");
    let entry = registry::resolve(&catalog, requested)
        .cloned()
        .ok_or_else(|| OpenAiError::model_not_found(requested, &catalog))?;
    let name = entry.name.clone();
    let registry = Arc::clone(&state.serving.registry);
    web::block(move || registry.get(&entry))
        .await
        .map_err(OpenAiError::internal)?
        .map_err(|e| OpenAiError::load_failed(&name, format!("loading {name}: {e:#}")))
}

fn tokenize(model: &ServedModel, text: &str) -> Result<Vec<u32>, OpenAiError> {
    model
        .tokenizer
        .encode(text, false)
        .map(|e| e.get_ids().to_vec())
        .map_err(|e| OpenAiError::internal(format!("tokenizer: {e}")))
}

/// The tokens a reply may take: as requested (or `default`), within what the context leaves.
fn max_new_tokens(
    requested: Option<u64>,
    default: usize,
    prompt: usize,
    model: &ServedModel,
) -> Result<usize, OpenAiError> {
    let context = model.context_length;
    if prompt >= context {
        return Err(OpenAiError::context_length_exceeded(prompt, context));
    }
    Ok(requested.map_or(default, |n| n as usize).min(context - prompt))
}

// ---------------------------------------------------------------------------------------------
// Replies

fn new_id(prefix: &str) -> String {
    format!("{prefix}{}", ulid::Ulid::new().to_string().to_lowercase())
}

fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// The headers every reply carries: which version answered and what ran it.
fn served_by(model: &ServedModel) -> [(&'static str, String); 2] {
    [("x-understudy-model-version", model.version.clone()), ("x-understudy-runtime", model.runtime.label().to_string())]
}

/// A whole (non-streamed) reply from `model`.
fn reply(model: &ServedModel, body: &impl Serialize) -> HttpResponse {
    let [version, runtime] = served_by(model);
    HttpResponse::Ok().insert_header(version).insert_header(runtime).json(body)
}
