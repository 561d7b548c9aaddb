//! The Playground page: chat with any served model through our own OpenAI-compatible endpoint.
//! The server renders only the form — the served models (the same catalog `/v1/models` lists),
//! the system prompt the models were trained with and the default tools as JSON; the
//! conversation itself runs in `static/playground.js`, which streams `POST /v1/chat/completions`
//! like any other client. Nothing here decodes or talks to the engine.
//!
//! The script rates each reply through the feedback API, also here: `POST /api/feedback`
//! (thumbs up: the conversation up to and including the reply becomes a `served` trace; thumbs
//! down: kept as a feedback record only, never trained on), `POST /api/feedback/preferred` (an
//! edit of the reply saved as preferred: a preference pair, chosen = the edit, rejected = the
//! reply, plus the SFT trace of the chosen side) and `GET /api/feedback`. What becomes of an
//! exchange is `serve::record`'s; this file parses the wire and names bad fields.

use actix_web::{web, HttpResponse};
use askama::Template;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, ErrorBody, PageError};
use super::shared::*;
use super::{AppState, WebError};
use crate::serve::record::{default_redactor, Exchange, Rating, ServedBy};
use crate::serve::registry::{self, CatalogEntry};
use crate::store::{FeedbackRow, FeedbackYield};
use crate::traces::wire::{messages_from_wire, WireMessage};
use crate::traces::{Message, ValidationError};

pub fn routes(config: &mut web::ServiceConfig) {
    config.route("/playground", web::get().to(page));
}

/// Routes under `/api`.
pub fn api_routes(config: &mut web::ServiceConfig) {
    config
        .route("/feedback", web::get().to(list_feedback))
        .route("/feedback", web::post().to(rate_reply))
        .route("/feedback/preferred", web::post().to(save_preferred));
}

async fn page(state: web::Data<AppState>) -> Result<HttpResponse, PageError> {
    let (exports, models) = state.with_db(|db| Ok((db.list_exports()?, db.list_models()?))).await?;
    let catalog = registry::catalog(&exports, &models);
    let tools = Value::Array(crate::traces::tools::default_tools());
    html(PlaygroundPage {
        nav: Nav::new("/playground"),
        models: catalog.iter().enumerate().map(|(index, entry)| model_option(entry, index == 0, &exports)).collect(),
        system_prompt: crate::bootstrap::generator::system_prompt(),
        tools_json: script_json(&tools)?,
    })
}

/// One model of the picker; a model served without an export says why.
fn model_option(entry: &CatalogEntry, selected: bool, exports: &[crate::store::ExportRow]) -> SelectOption {
    let champion = if entry.champion { " · champion" } else { "" };
    let runtime = if entry.exported {
        String::new()
    } else if exports.iter().any(|e| e.model_id.as_deref() == Some(entry.version.as_str()) && !e.parity_passed) {
        " · not exported: its export failed the parity check; runs on Understudy's own decoder".to_string()
    } else {
        " · not exported yet; runs on Understudy's own decoder".to_string()
    };
    SelectOption {
        value: entry.name.clone(),
        label: format!("{}{champion} ({}){runtime}", entry.name, entry.version),
        selected,
    }
}

/// Pretty JSON that is safe as the raw text of a `<script>` element: `<`, `>` and `&` can only
/// occur inside JSON strings, where their `\u` escapes mean the same, so no `</script>` closes
/// the element early.
fn script_json(value: &Value) -> Result<String, WebError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| WebError::Internal(format!("tools JSON: {e}")))?;
    Ok(text.replace('<', "\\u003c").replace('>', "\\u003e").replace('&', "\\u0026"))
}

// ---------------------------------------------------------------------------------------------
// The feedback API

/// A thumbs up or down on one served reply.
#[derive(Debug, Deserialize, ToSchema)]
pub struct FeedbackRequest {
    /// `up` or `down`.
    pub rating: String,
    /// The served model that wrote the reply.
    pub model: String,
    /// The version that answered (the reply's `system_fingerprint`).
    #[serde(default)]
    pub version: Option<String>,
    /// The conversation the reply answers, as OpenAI messages (system prompt included).
    #[schema(value_type = Vec<Object>)]
    pub messages: Vec<Value>,
    /// The tools offered with the request, if any.
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    pub tools: Option<Vec<Value>>,
    /// The model's reply: the assistant message as the endpoint sent it.
    #[schema(value_type = Object)]
    pub reply: Value,
}

/// An edit of one served reply, saved as the preferred answer.
#[derive(Debug, Deserialize, ToSchema)]
pub struct PreferredRequest {
    pub model: String,
    #[serde(default)]
    pub version: Option<String>,
    #[schema(value_type = Vec<Object>)]
    pub messages: Vec<Value>,
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    pub tools: Option<Vec<Value>>,
    /// The model's reply (the rejected side).
    #[schema(value_type = Object)]
    pub reply: Value,
    /// The user's edit of it (the chosen side): an assistant message.
    #[schema(value_type = Object)]
    pub edited: Value,
}

#[derive(Serialize, ToSchema)]
pub struct FeedbackPage {
    pub total: i64,
    pub items: Vec<FeedbackRow>,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct FeedbackQuery {
    pub limit: Option<i64>,
    pub offset: Option<i64>,
}

fn bad(error: ValidationError) -> ApiError {
    ApiError(WebError::BadRequest(error.to_string()))
}

/// A JSON body, a type error naming the field it is at.
fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { "body".to_string() } else { path };
        bad(ValidationError { field, reason: e.inner().to_string() })
    })
}

/// OpenAI messages at `field` (`messages`, or `reply`/`edited` for one message) → canonical ones.
fn wire_messages(values: Vec<Value>, field: &str) -> Result<Vec<Message>, ApiError> {
    let name = |index: usize| if field == "messages" { format!("messages[{index}]") } else { field.to_string() };
    let wire = values
        .into_iter()
        .enumerate()
        .map(|(index, value)| {
            serde_json::from_value::<WireMessage>(value)
                .map_err(|e| bad(ValidationError { field: name(index), reason: e.to_string() }))
        })
        .collect::<Result<Vec<_>, _>>()?;
    messages_from_wire(wire).map_err(|e| {
        let field = if field == "messages" { e.field } else { e.field.replacen("messages[0]", field, 1) };
        bad(ValidationError { field, reason: e.reason })
    })
}

fn one_message(value: Value, field: &str) -> Result<Message, ApiError> {
    let mut messages = wire_messages(vec![value], field)?;
    Ok(messages.remove(0))
}

fn served_by(model: &str, version: Option<String>) -> Result<ServedBy, ApiError> {
    if model.trim().is_empty() {
        return Err(bad(ValidationError { field: "model".into(), reason: "is required".into() }));
    }
    let version = version.filter(|v| !v.trim().is_empty()).unwrap_or_else(|| "unknown".into());
    Ok(ServedBy { model: model.to_string(), version })
}

fn exchange(messages: Vec<Value>, tools: Option<Vec<Value>>, reply: Value) -> Result<Exchange, ApiError> {
    let messages = wire_messages(messages, "messages")?;
    let reply = one_message(reply, "reply")?;
    Exchange::new(messages, tools.unwrap_or_default(), reply, default_redactor()).map_err(bad)
}

/// Rate a served reply. Thumbs up stores the conversation up to and including the reply as a
/// `served` trace (metadata `feedback: up`; an identical stored trace is linked instead);
/// thumbs down is kept only as this feedback record: DPO trains on pairs, and SFT must not
/// learn a rejected reply. Text is redacted as captured traces are.
#[utoipa::path(post, path = "/api/feedback", tag = "playground", request_body = FeedbackRequest,
    responses((status = 201, body = FeedbackRow), (status = 400, body = ErrorBody)))]
pub async fn rate_reply(state: web::Data<AppState>, body: web::Bytes) -> Result<HttpResponse, ApiError> {
    let request: FeedbackRequest = parse_body(&body)?;
    let rating = match request.rating.as_str() {
        "up" => Rating::Up,
        "down" => Rating::Down,
        other => {
            return Err(bad(ValidationError {
                field: "rating".into(),
                reason: format!("{other:?} is not up or down (an edit goes to /api/feedback/preferred)"),
            }))
        }
    };
    let served_by = served_by(&request.model, request.version)?;
    let exchange = exchange(request.messages, request.tools, request.reply)?;
    let feedback = exchange.feedback(rating, None, &served_by);
    let trace = match rating {
        Rating::Up => {
            let mut metadata = Map::new();
            metadata.insert("feedback".into(), Value::from("up"));
            Some(exchange.trace(&served_by, metadata).map_err(bad)?)
        }
        _ => None,
    };
    let stored = state
        .with_db(move |db| {
            let yields = trace.as_ref().map_or(FeedbackYield::Nothing, FeedbackYield::Trace);
            Ok(db.record_feedback(&feedback, yields)?)
        })
        .await?;
    Ok(HttpResponse::Created().json(stored))
}

/// Save an edit of a served reply as the preferred answer: a preference pair (`source:
/// served`; prompt = the conversation before the reply, chosen = the edit, rejected = the
/// reply) and, as for imported pairs, the SFT trace of its chosen side (`source: served`,
/// metadata `feedback: preferred` and the pair id) — the edit is a human-corrected answer.
#[utoipa::path(post, path = "/api/feedback/preferred", tag = "playground", request_body = PreferredRequest,
    responses((status = 201, body = FeedbackRow), (status = 400, body = ErrorBody)))]
pub async fn save_preferred(state: web::Data<AppState>, body: web::Bytes) -> Result<HttpResponse, ApiError> {
    let request: PreferredRequest = parse_body(&body)?;
    let served_by = served_by(&request.model, request.version)?;
    let mut exchange = exchange(request.messages, request.tools, request.reply)?;
    let edited = one_message(request.edited, "edited")?;
    let (pair, trace) = exchange.preferred(edited, default_redactor(), &served_by).map_err(bad)?;
    let chosen = pair.chosen.completion_messages().pop();
    let feedback = exchange.feedback(Rating::Preferred, chosen.as_ref(), &served_by);
    let stored =
        state.with_db(move |db| Ok(db.record_feedback(&feedback, FeedbackYield::Pair(&pair, &trace))?)).await?;
    Ok(HttpResponse::Created().json(stored))
}

/// Playground ratings, newest first.
#[utoipa::path(get, path = "/api/feedback", tag = "playground", params(FeedbackQuery),
    responses((status = 200, body = FeedbackPage)))]
pub async fn list_feedback(
    state: web::Data<AppState>,
    query: web::Query<FeedbackQuery>,
) -> Result<web::Json<FeedbackPage>, ApiError> {
    let (limit, offset) = (query.limit.unwrap_or(50).clamp(1, 1000), query.offset.unwrap_or(0).max(0));
    let page = state
        .with_db(move |db| Ok(FeedbackPage { total: db.count_feedback()?, items: db.list_feedback(limit, offset)? }))
        .await?;
    Ok(web::Json(page))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_messages_are_named_by_their_field() {
        let error = |result: Result<Vec<Message>, ApiError>| result.unwrap_err().0.to_string();
        let bad_role = serde_json::json!({"role": "robot", "content": "x"});
        assert!(error(wire_messages(vec![bad_role.clone()], "messages")).starts_with("messages[0]: "));
        assert!(error(wire_messages(vec![bad_role], "reply")).starts_with("reply: "));
        let bad_content = serde_json::json!({"role": "assistant", "content": 7});
        assert!(error(wire_messages(vec![bad_content], "edited")).starts_with("edited"));
    }

    #[test]
    fn script_json_cannot_close_its_element_and_parses_back() {
        let value = serde_json::json!({"description": "</script><b>a & b</b>"});
        let text = script_json(&value).unwrap();
        assert!(!text.contains('<') && !text.contains('>') && !text.contains('&'));
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), value);
    }

    #[test]
    fn a_model_served_without_an_export_says_why() {
        let entry = |version: &str, exported: bool| CatalogEntry {
            name: format!("m-{version}"),
            version: version.into(),
            path: "/x".into(),
            created: 0,
            champion: false,
            exported,
        };
        let failed = crate::store::ExportRow {
            id: "exp_1".into(),
            model_id: Some("mdl_a".into()),
            name: "m".into(),
            path: "/x".into(),
            manifest: Value::Null,
            parity_passed: false,
            created_at: String::new(),
        };
        let exports = [failed];
        assert!(model_option(&entry("mdl_a", false), false, &exports).label.contains("failed the parity check"));
        assert!(model_option(&entry("mdl_b", false), false, &exports).label.contains("not exported yet"));
        assert!(!model_option(&entry("exp_2", true), false, &exports).label.contains("not exported"));
    }
}

#[derive(Template)]
#[template(path = "pages/playground.html")]
pub struct PlaygroundPage {
    pub nav: Nav,
    /// The served models, the champion first; empty when nothing is served yet.
    pub models: Vec<SelectOption>,
    /// The system prompt the models were trained with.
    pub system_prompt: String,
    /// The default tools as JSON, already safe inside a `<script>` element.
    pub tools_json: String,
}
