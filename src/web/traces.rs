//! Traces: the list with filters and pagination (an htmx partial), one trace as a conversation,
//! delete, the import page (JSONL traces or preference pairs, streamed to `uploads/` under the
//! upload cap, then an import job), and the `/api/traces` and `/api/pairs` routes.

use actix_multipart::Multipart;
use actix_web::{web, HttpRequest, HttpResponse};
use askama::Template;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, ErrorBody, PageError};
use super::shared::*;
use super::{AppState, WebError};
use crate::jobs::import_dpo::ImportDpoParams;
use crate::jobs::import_traces::ImportParams;
use crate::jobs::JobParams;
use crate::jobs::JobRecord;
use crate::store::{TraceFilter, TraceSummary};
use crate::traces::formats::ImportFormat;
use crate::traces::wire::{to_canonical_json, to_openai_json};
use crate::traces::{Message, OutcomeStatus, Role, Source, Split};

pub fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/traces", web::get().to(traces))
        .route("/traces/{id}", web::get().to(trace))
        .route("/traces/{id}/delete", web::post().to(delete_trace_form))
        .route("/import", web::get().to(import_form))
        .route("/import", web::post().to(import_upload));
}

/// Routes under `/api`.
pub fn api_routes(config: &mut web::ServiceConfig) {
    config
        .route("/traces", web::get().to(list_traces))
        .route("/traces/export", web::get().to(export_traces))
        .route("/traces/import", web::post().to(import_traces))
        .route("/traces/{id}", web::get().to(get_trace))
        .route("/traces/{id}", web::delete().to(delete_trace))
        .route("/pairs", web::get().to(list_pairs))
        .route("/pairs/import", web::post().to(import_pairs));
}

pub struct TraceRow {
    pub id: String,
    pub prompt_short: String,
    pub source: String,
    pub category: String,
    pub split: String,
    pub outcome: String,
    pub n_tool_calls: i64,
    pub created_at: String,
}

/// The result table of the Traces page; also the htmx partial.
#[derive(Template)]
#[template(path = "components/trace_rows.html")]
pub struct TraceRowsPartial {
    pub rows: Vec<TraceRow>,
    pub total: i64,
    pub page: i64,
    pub pages: i64,
    pub prev_link: Option<String>,
    pub next_link: Option<String>,
    pub filter_error: Option<String>,
}

#[derive(Template)]
#[template(path = "pages/traces.html")]
pub struct TracesPage {
    pub nav: Nav,
    pub sources: Vec<SelectOption>,
    pub categories: Vec<SelectOption>,
    pub splits: Vec<SelectOption>,
    pub outcomes: Vec<SelectOption>,
    pub q: String,
    pub rows: Vec<TraceRow>,
    pub total: i64,
    pub page: i64,
    pub pages: i64,
    pub prev_link: Option<String>,
    pub next_link: Option<String>,
    pub filter_error: Option<String>,
}

pub struct CallView {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

pub struct MessageView {
    pub label: &'static str,
    pub css: &'static str,
    pub content: Option<String>,
    pub truncated: bool,
    pub tool_call_id: Option<String>,
    pub calls: Vec<CallView>,
}

pub struct CheckView {
    pub name: String,
    pub passed: bool,
}

#[derive(Template)]
#[template(path = "pages/trace.html")]
pub struct TracePage {
    pub nav: Nav,
    pub id: String,
    pub prompt: String,
    pub source: String,
    pub category: String,
    pub split: String,
    pub outcome: String,
    pub checks: Vec<CheckView>,
    pub created_at: String,
    pub n_tool_calls: usize,
    pub messages: Vec<MessageView>,
    pub tools: String,
}

#[derive(Template)]
#[template(path = "pages/import.html")]
pub struct ImportPage {
    pub nav: Nav,
    pub formats: Vec<SelectOption>,
    pub file_error: Option<String>,
    pub format_error: Option<String>,
}

/// The import form's choice for Command Center / TRL preference pairs.
const DPO_CHOICE: &str = "dpo";

/// Longest text shown inline in a conversation before it is cut.
const MAX_SHOWN_CONTENT: usize = 20_000;

fn shorten(text: &str, width: usize) -> String {
    let line = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
    if line.chars().count() > width {
        format!("{}…", line.chars().take(width).collect::<String>())
    } else {
        line.to_string()
    }
}

pub(super) fn trace_row(summary: TraceSummary) -> TraceRow {
    TraceRow {
        prompt_short: shorten(&summary.prompt, 90),
        id: summary.id,
        source: summary.source,
        category: summary.category,
        split: summary.split,
        outcome: summary.outcome,
        n_tool_calls: summary.n_tool_calls,
        created_at: summary.created_at,
    }
}

async fn traces(
    state: web::Data<AppState>,
    request: HttpRequest,
    query: web::Query<TraceQuery>,
) -> Result<HttpResponse, PageError> {
    let query = query.into_inner();
    let (filter, filter_error) = match TraceFilter::try_from(&query) {
        Ok(filter) => (filter, None),
        Err(e) => (TraceFilter::default(), Some(format!("{}: {} (showing all traces)", e.field, e.message))),
    };
    let (page, per_page) = (query.page(), query.per_page());
    let (total, summaries, categories) = state
        .with_db(move |db| {
            let total = db.count_traces(&filter)?;
            Ok((total, db.list_traces(&filter, per_page, (page - 1) * per_page)?, db.trace_categories()?))
        })
        .await?;
    let pages = ((total + per_page - 1) / per_page).max(1);
    let link = |page: i64| {
        let mut q = query.clone();
        q.page = Some(page);
        q.per_page = None;
        serde_urlencoded::to_string(&q).unwrap_or_default()
    };
    let prev_link = (page > 1).then(|| link(page - 1));
    let next_link = (page < pages).then(|| link(page + 1));
    let rows: Vec<TraceRow> = summaries.into_iter().map(trace_row).collect();
    if is_htmx(&request) {
        return html(TraceRowsPartial { rows, total, page, pages, prev_link, next_link, filter_error });
    }
    let current = |value: &Option<String>| value.clone().unwrap_or_default();
    html(TracesPage {
        nav: Nav::new("/traces"),
        sources: SelectOption::list(Source::ALL.map(Source::as_str), &current(&query.source), Some("any")),
        categories: SelectOption::list(categories.iter().map(String::as_str), &current(&query.category), Some("any")),
        splits: SelectOption::list(Split::ALL.map(Split::as_str), &current(&query.split), Some("any")),
        outcomes: SelectOption::list(
            OutcomeStatus::ALL.map(OutcomeStatus::as_str),
            &current(&query.outcome),
            Some("any"),
        ),
        q: current(&query.q),
        rows,
        total,
        page,
        pages,
        prev_link,
        next_link,
        filter_error,
    })
}

fn cut(text: &str) -> (String, bool) {
    if text.len() <= MAX_SHOWN_CONTENT {
        return (text.to_string(), false);
    }
    let mut end = MAX_SHOWN_CONTENT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    (text[..end].to_string(), true)
}

pub(super) fn message_views(messages: &[Message]) -> Vec<MessageView> {
    messages
        .iter()
        .map(|message| {
            let (label, css) = match message.role {
                Role::System => ("System", "system"),
                Role::User => ("User", "user"),
                Role::Assistant if !message.tool_calls.is_empty() => {
                    ("Assistant · reasoning and tool calls", "assistant reasoning")
                }
                Role::Assistant => ("Assistant · answer", "assistant answer"),
                Role::Tool => ("Tool result", "tool"),
            };
            let (content, truncated) = match message.content.as_deref().filter(|c| !c.is_empty()) {
                Some(text) => {
                    let (shown, truncated) = cut(text);
                    (Some(shown), truncated)
                }
                None => (None, false),
            };
            MessageView {
                label,
                css,
                content,
                truncated,
                tool_call_id: message.tool_call_id.clone(),
                calls: message
                    .tool_calls
                    .iter()
                    .map(|call| CallView {
                        id: call.id.clone(),
                        name: call.name.clone(),
                        arguments: serde_json::to_string_pretty(&call.arguments_value())
                            .unwrap_or_else(|_| call.arguments.clone()),
                    })
                    .collect(),
            }
        })
        .collect()
}

async fn trace(state: web::Data<AppState>, id: web::Path<String>) -> Result<HttpResponse, PageError> {
    let id = id.into_inner();
    let trace = state
        .with_db(move |db| db.get_trace(&id)?.ok_or_else(|| WebError::NotFound(format!("no trace with id {id:?}"))))
        .await?;
    let tools: Vec<String> = trace
        .tools
        .iter()
        .filter_map(|t| t.pointer("/function/name").and_then(|n| n.as_str()).map(str::to_string))
        .collect();
    html(TracePage {
        nav: Nav::new("/traces"),
        messages: message_views(&trace.messages),
        n_tool_calls: trace.n_tool_calls(),
        checks: trace.outcome.checks.iter().map(|c| CheckView { name: c.name.clone(), passed: c.passed }).collect(),
        id: trace.id,
        prompt: shorten(&trace.prompt, 160),
        source: trace.source.as_str().to_string(),
        category: trace.category,
        split: trace.split.as_str().to_string(),
        outcome: trace.outcome.status.as_str().to_string(),
        created_at: trace.created_at,
        tools: tools.join(", "),
    })
}

async fn delete_trace_form(state: web::Data<AppState>, id: web::Path<String>) -> Result<HttpResponse, PageError> {
    let id = id.into_inner();
    state
        .with_db(move |db| {
            if db.delete_trace(&id)? {
                Ok(())
            } else {
                Err(WebError::NotFound(format!("no trace with id {id:?}")))
            }
        })
        .await?;
    Ok(see_other("/traces"))
}

fn import_page(format: &str, file_error: Option<String>, format_error: Option<String>) -> ImportPage {
    ImportPage {
        nav: Nav::new("/import"),
        formats: SelectOption::list(
            ImportFormat::ALL.map(ImportFormat::as_str).into_iter().chain([DPO_CHOICE]),
            format,
            None,
        ),
        file_error,
        format_error,
    }
}

async fn import_form() -> Result<HttpResponse, PageError> {
    html(import_page("canonical", None, None))
}

/// Multipart upload: stream the file to the uploads dir, validate the fields, queue the job.
async fn import_upload(state: web::Data<AppState>, mut form: Multipart) -> Result<HttpResponse, PageError> {
    let mut format_text = String::from("canonical");
    let mut upload: Option<(std::path::PathBuf, String, usize)> = None;
    while let Some(field) = form.next().await {
        let mut field = field.map_err(|e| WebError::BadRequest(format!("malformed form: {e}")))?;
        match field.name().unwrap_or("") {
            "format" => {
                let mut bytes = Vec::new();
                while let Some(chunk) = field.next().await {
                    bytes.extend_from_slice(&chunk.map_err(|e| WebError::BadRequest(format!("malformed form: {e}")))?);
                    if bytes.len() > 64 {
                        break;
                    }
                }
                format_text = String::from_utf8_lossy(&bytes).trim().to_string();
            }
            "file" => {
                let original =
                    field.content_disposition().and_then(|d| d.get_filename()).map(str::to_string).unwrap_or_default();
                if original.is_empty() {
                    while field.next().await.is_some() {}
                    continue;
                }
                let saved = save_upload(&state, &original, &mut field).await?;
                upload = Some((saved.path, saved.shown, saved.bytes));
            }
            _ => while field.next().await.is_some() {},
        }
    }
    let is_dpo = format_text == DPO_CHOICE;
    let format = if is_dpo { Ok(ImportFormat::Canonical) } else { format_text.parse::<ImportFormat>() };
    let file_error = match &upload {
        None => Some("Choose a JSONL file to import.".to_string()),
        Some((_, name, 0)) => Some(format!("{name} is empty: there is nothing to import.")),
        Some(_) => None,
    };
    let format_error = format.as_ref().err().cloned();
    if file_error.is_some() || format_error.is_some() {
        if let Some((path, _, _)) = &upload {
            let _ = tokio::fs::remove_file(path).await;
        }
        let page =
            import_page(if format_error.is_some() { "canonical" } else { &format_text }, file_error, format_error);
        let body = page.render().map_err(|e| WebError::Internal(format!("template: {e}")))?;
        return Ok(HttpResponse::UnprocessableEntity().content_type("text/html; charset=utf-8").body(body));
    }
    let (path, shown, _) = upload.expect("checked above");
    let params = if is_dpo {
        JobParams::ImportDpo(ImportDpoParams { path, display_name: Some(shown) })
    } else {
        JobParams::ImportTraces(ImportParams {
            path,
            format: format.expect("checked above"),
            display_name: Some(shown),
        })
    };
    let id = state.submit(params).await?;
    Ok(see_other(&format!("/jobs/{id}")))
}

pub const DEFAULT_PER_PAGE: i64 = 25;
pub const MAX_PER_PAGE: i64 = 500;

/// Filters shared by the trace list, the export and the Traces page. Empty values mean "any".
#[derive(Debug, Clone, Default, Deserialize, Serialize, IntoParams)]
pub struct TraceQuery {
    /// synthetic, claude_code, dpo_import, served or import
    pub source: Option<String>,
    pub category: Option<String>,
    /// train, val or test
    pub split: Option<String>,
    /// success, failure, partial or unknown
    pub outcome: Option<String>,
    /// Text the prompt or any message contains.
    pub q: Option<String>,
    /// 1-based page number.
    pub page: Option<i64>,
    pub per_page: Option<i64>,
}

/// Which query field was wrong and why.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryFieldError {
    pub field: &'static str,
    pub message: String,
}

impl TryFrom<&TraceQuery> for TraceFilter {
    type Error = QueryFieldError;

    fn try_from(query: &TraceQuery) -> Result<Self, Self::Error> {
        fn given(value: &Option<String>) -> Option<&str> {
            value.as_deref().map(str::trim).filter(|v| !v.is_empty())
        }
        let bad = |field: &'static str, message: &str| QueryFieldError { field, message: message.to_string() };
        Ok(TraceFilter {
            source: given(&query.source)
                .map(|v| {
                    Source::parse(v)
                        .ok_or_else(|| bad("source", "expected synthetic, claude_code, dpo_import, served or import"))
                })
                .transpose()?,
            category: given(&query.category).map(str::to_string),
            split: given(&query.split)
                .map(|v| Split::parse(v).ok_or_else(|| bad("split", "expected train, val or test")))
                .transpose()?,
            outcome: given(&query.outcome)
                .map(|v| {
                    OutcomeStatus::parse(v)
                        .ok_or_else(|| bad("outcome", "expected success, failure, partial or unknown"))
                })
                .transpose()?,
            text: given(&query.q).map(str::to_string),
        })
    }
}

impl TraceQuery {
    pub fn page(&self) -> i64 {
        self.page.unwrap_or(1).max(1)
    }

    pub fn per_page(&self) -> i64 {
        self.per_page.unwrap_or(DEFAULT_PER_PAGE).clamp(1, MAX_PER_PAGE)
    }
}

#[derive(Serialize, ToSchema)]
pub struct TraceListPage {
    pub total: i64,
    pub page: i64,
    pub per_page: i64,
    pub items: Vec<TraceSummary>,
}

/// One page of trace summaries, newest first.
#[utoipa::path(get, path = "/api/traces", params(TraceQuery),
    responses((status = 200, body = TraceListPage), (status = 400, body = ErrorBody)))]
pub async fn list_traces(
    state: web::Data<AppState>,
    query: web::Query<TraceQuery>,
) -> Result<web::Json<TraceListPage>, ApiError> {
    let query = query.into_inner();
    let filter =
        TraceFilter::try_from(&query).map_err(|e| WebError::BadRequest(format!("{}: {}", e.field, e.message)))?;
    let (page, per_page) = (query.page(), query.per_page());
    let result = state
        .with_db(move |db| {
            let total = db.count_traces(&filter)?;
            let items = db.list_traces(&filter, per_page, (page - 1) * per_page)?;
            Ok(TraceListPage { total, page, per_page, items })
        })
        .await?;
    Ok(web::Json(result))
}

/// One trace in the canonical form (spec 2.1).
#[utoipa::path(get, path = "/api/traces/{id}", params(("id" = String, Path)),
    responses((status = 200, description = "The canonical trace object", body = Object), (status = 404, body = ErrorBody)))]
pub async fn get_trace(state: web::Data<AppState>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let body = state
        .with_db(move |db| {
            db.get_trace(&id)?
                .map(|t| to_canonical_json(&t))
                .ok_or_else(|| WebError::NotFound(format!("no trace with id {id:?}")))
        })
        .await?;
    Ok(HttpResponse::Ok().content_type("application/json").body(body))
}

#[utoipa::path(delete, path = "/api/traces/{id}", params(("id" = String, Path)),
    responses((status = 204, description = "Deleted"), (status = 404, body = ErrorBody)))]
pub async fn delete_trace(state: web::Data<AppState>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    state
        .with_db(move |db| {
            if db.delete_trace(&id)? {
                Ok(())
            } else {
                Err(WebError::NotFound(format!("no trace with id {id:?}")))
            }
        })
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct ExportQuery {
    /// canonical (spec 2.1, default) or openai ({"messages","tools"})
    pub format: Option<String>,
}

/// Matching traces as JSONL.
#[utoipa::path(get, path = "/api/traces/export", params(ExportQuery, TraceQuery),
    responses((status = 200, description = "One trace per line", content_type = "application/x-ndjson", body = String),
              (status = 400, body = ErrorBody)))]
pub async fn export_traces(
    state: web::Data<AppState>,
    query: web::Query<ExportQuery>,
    filter: web::Query<TraceQuery>,
) -> Result<HttpResponse, ApiError> {
    let encode = match query.format.as_deref().unwrap_or("canonical") {
        "canonical" => to_canonical_json,
        "openai" => to_openai_json,
        other => {
            return Err(WebError::BadRequest(format!("format: unknown {other:?}, expected canonical or openai")).into())
        }
    };
    let filter =
        TraceFilter::try_from(&*filter).map_err(|e| WebError::BadRequest(format!("{}: {}", e.field, e.message)))?;
    let body = state
        .with_db(move |db| {
            let mut out = String::new();
            db.for_each_trace(&filter, |trace| {
                out.push_str(&encode(&trace));
                out.push('\n');
                Ok(())
            })?;
            Ok(out)
        })
        .await?;
    Ok(HttpResponse::Ok().content_type("application/x-ndjson").body(body))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct ImportQuery {
    /// canonical (default), openai or sharegpt
    pub format: Option<String>,
    /// A name for the file in job listings.
    pub name: Option<String>,
}

/// Queue an import of the JSONL request body as a background job.
#[utoipa::path(post, path = "/api/traces/import", params(ImportQuery),
    request_body(content = String, description = "JSONL, one trace per line", content_type = "application/x-ndjson"),
    responses((status = 202, body = JobRecord), (status = 400, body = ErrorBody)))]
pub async fn import_traces(
    state: web::Data<AppState>,
    query: web::Query<ImportQuery>,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let format: ImportFormat = query
        .format
        .as_deref()
        .unwrap_or("canonical")
        .parse()
        .map_err(|e: String| WebError::BadRequest(format!("format: {e}")))?;
    let upload = save_upload(&state, query.name.as_deref().unwrap_or("body.jsonl"), body).await?;
    let params = ImportParams { path: upload.path, format, display_name: Some(upload.shown) };
    let id = state.submit(JobParams::ImportTraces(params)).await?;
    accepted(&state, id).await
}

/// An upload stored under `uploads/`: its path, the name the user knows it by, its size.
struct Upload {
    path: std::path::PathBuf,
    shown: String,
    bytes: usize,
}

/// Stream an upload (an API body or a form's file field) into a new file under `uploads/`; past
/// `MAX_UPLOAD_BYTES` the file is removed and the upload refused, whichever door it came through.
async fn save_upload<E: std::fmt::Display>(
    state: &AppState,
    name: &str,
    mut body: impl futures_util::Stream<Item = Result<web::Bytes, E>> + Unpin,
) -> Result<Upload, WebError> {
    let dir = state.config.uploads_dir();
    tokio::fs::create_dir_all(&dir).await.map_err(|e| WebError::Internal(format!("uploads dir: {e}")))?;
    let safe: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') { c } else { '_' })
        .take(80)
        .collect();
    let path = dir.join(format!("{}-{safe}", ulid::Ulid::new()));
    let mut file = tokio::fs::File::create(&path).await.map_err(|e| WebError::Internal(format!("upload file: {e}")))?;
    let mut bytes = 0usize;
    while let Some(chunk) = body.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(e) => {
                let _ = tokio::fs::remove_file(&path).await;
                return Err(WebError::BadRequest(format!("reading the upload: {e}")));
            }
        };
        bytes += chunk.len();
        if bytes > super::MAX_UPLOAD_BYTES {
            drop(file);
            let _ = tokio::fs::remove_file(&path).await;
            return Err(WebError::BadRequest(format!("upload over the {}-byte limit", super::MAX_UPLOAD_BYTES)));
        }
        file.write_all(&chunk).await.map_err(|e| WebError::Internal(format!("upload file: {e}")))?;
    }
    file.flush().await.map_err(|e| WebError::Internal(format!("upload file: {e}")))?;
    Ok(Upload { path, shown: name.to_string(), bytes })
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct PairImportQuery {
    /// A name for the file in job listings.
    pub name: Option<String>,
}

/// Queue an import of Command Center / TRL preference pairs (JSONL, or one JSON array).
#[utoipa::path(post, path = "/api/pairs/import", params(PairImportQuery),
    request_body(content = String, description = "Preference pairs: JSONL or a JSON array", content_type = "application/x-ndjson"),
    responses((status = 202, body = JobRecord), (status = 400, body = ErrorBody)))]
pub async fn import_pairs(
    state: web::Data<AppState>,
    query: web::Query<PairImportQuery>,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let Upload { path, shown: name, .. } =
        save_upload(&state, query.name.as_deref().unwrap_or("dpo_pairs.jsonl"), body).await?;
    let params = ImportDpoParams { path, display_name: Some(name) };
    let id = state.submit(JobParams::ImportDpo(params)).await?;
    accepted(&state, id).await
}

#[derive(Serialize, ToSchema)]
pub struct PairPage {
    pub total: i64,
    /// Pairs as `{"id","prompt","chosen","rejected","source","metadata",...,"trace_id"}`.
    #[schema(value_type = Vec<Object>)]
    pub items: Vec<serde_json::Value>,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct PairQuery {
    pub limit: Option<i64>,
    pub offset: Option<i64>,
}

/// Stored preference pairs, newest first.
#[utoipa::path(get, path = "/api/pairs", params(PairQuery), responses((status = 200, body = PairPage)))]
pub async fn list_pairs(
    state: web::Data<AppState>,
    query: web::Query<PairQuery>,
) -> Result<web::Json<PairPage>, ApiError> {
    let (limit, offset) = (query.limit.unwrap_or(50).clamp(1, 1000), query.offset.unwrap_or(0).max(0));
    let page = state
        .with_db(move |db| {
            let items = db
                .list_pairs(limit, offset)?
                .into_iter()
                .map(|stored| {
                    let mut value = stored.pair.to_json();
                    value["trace_id"] = serde_json::json!(stored.trace_id);
                    value
                })
                .collect();
            Ok(PairPage { total: db.count_pairs()?, items })
        })
        .await?;
    Ok(web::Json(page))
}
