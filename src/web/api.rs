//! The JSON API under `/api/` and its OpenAPI document (utoipa) at `/openapi.json`. Handlers
//! convert wire input into domain values at the door and answer errors as JSON.

use actix_web::{web, HttpResponse};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use utoipa::{IntoParams, OpenApi, ToSchema};

use super::error::ApiError;
use super::{AppState, WebError};
use crate::jobs::import_traces::{params_value, ImportParams, ImportReport, LineError};
use crate::jobs::{JobKind, JobLog, JobMetric, JobRecord, JobStatus};
use crate::store::{NamedCount, TraceCounts, TraceFilter, TraceSummary};
use crate::traces::formats::ImportFormat;
use crate::traces::wire::{to_canonical_json, to_openai_json};
use crate::traces::{OutcomeStatus, Source, Split};

pub const DEFAULT_PER_PAGE: i64 = 25;
pub const MAX_PER_PAGE: i64 = 500;

#[derive(OpenApi)]
#[openapi(
    info(title = "Understudy API", description = "Traces, jobs and statistics of an Understudy data dir."),
    paths(
        health,
        stats,
        list_traces,
        get_trace,
        delete_trace,
        export_traces,
        import_traces,
        list_jobs,
        get_job,
        cancel_job,
        resume_job,
        start_bootstrap,
        list_templates,
        get_template,
        put_template,
        import_pairs,
        list_pairs,
        build_dataset,
        list_datasets,
        get_dataset,
        get_dataset_file,
        start_run,
        list_models,
        get_model,
        start_export,
        list_exports,
        start_deploy,
        capture_status,
        capture_scan,
        capture_engine_start,
        capture_engine_stop,
        capture_hook_install,
        capture_hook_uninstall
    ),
    components(schemas(
        Health,
        Stats,
        TraceCounts,
        NamedCount,
        TracePage,
        TraceSummary,
        JobRecord,
        JobStatus,
        JobDetail,
        JobLog,
        JobMetric,
        ImportReport,
        LineError,
        ImportFormat,
        ErrorBody,
        ErrorDetail,
        BootstrapRequest,
        TemplateSummary,
        PairPage,
        DatasetRequest,
        crate::store::DatasetRow,
        RunRequest,
        crate::store::ModelRow,
        ExportModelRequest,
        crate::store::ExportRow,
        DeployRequest,
        CaptureScanRequest,
        CaptureStartRequest
    ))
)]
pub struct ApiDoc;

pub fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/stats", web::get().to(stats))
        .route("/traces", web::get().to(list_traces))
        .route("/traces/export", web::get().to(export_traces))
        .route("/traces/import", web::post().to(import_traces))
        .route("/traces/{id}", web::get().to(get_trace))
        .route("/traces/{id}", web::delete().to(delete_trace))
        .route("/jobs", web::get().to(list_jobs))
        .route("/jobs/{id}", web::get().to(get_job))
        .route("/jobs/{id}/cancel", web::post().to(cancel_job))
        .route("/jobs/{id}/resume", web::post().to(resume_job))
        .route("/pairs", web::get().to(list_pairs))
        .route("/pairs/import", web::post().to(import_pairs))
        .route("/datasets", web::get().to(list_datasets))
        .route("/datasets", web::post().to(build_dataset))
        .route("/datasets/{id}", web::get().to(get_dataset))
        .route("/datasets/{id}/files/{name}", web::get().to(get_dataset_file))
        .route("/runs", web::post().to(start_run))
        .route("/models", web::get().to(list_models))
        .route("/models/{id}", web::get().to(get_model))
        .route("/models/{id}/export", web::post().to(start_export))
        .route("/exports", web::get().to(list_exports))
        .route("/exports/{id}/deploy", web::post().to(start_deploy))
        .route("/capture", web::get().to(capture_status))
        .route("/capture/scan", web::post().to(capture_scan))
        .route("/capture/engine/start", web::post().to(capture_engine_start))
        .route("/capture/engine/stop", web::post().to(capture_engine_stop))
        .route("/capture/hook/install", web::post().to(capture_hook_install))
        .route("/capture/hook/uninstall", web::post().to(capture_hook_uninstall))
        .route("/bootstrap", web::post().to(start_bootstrap))
        .route("/templates", web::get().to(list_templates))
        .route("/templates/{name}", web::get().to(get_template))
        .route("/templates/{name}", web::put().to(put_template));
}

/// The whole OpenAPI document: the JSON API and the OpenAI-compatible routes.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    let mut document = ApiDoc::openapi();
    document.merge(super::openai::OpenAiDoc::openapi());
    document
}

pub async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok().content_type("application/json").body(openapi_document().to_pretty_json().unwrap_or_default())
}

/// The error envelope every API error uses.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub code: u16,
}

#[derive(Serialize, ToSchema)]
pub struct Health {
    pub status: String,
    pub version: String,
    pub schema_version: i64,
}

#[utoipa::path(get, path = "/health", responses((status = 200, body = Health)))]
pub async fn health(state: web::Data<AppState>) -> Result<web::Json<Health>, ApiError> {
    let schema_version = state.with_db(|db| Ok(db.schema_version()?)).await?;
    Ok(web::Json(Health { status: "ok".into(), version: env!("CARGO_PKG_VERSION").into(), schema_version }))
}

#[derive(Serialize, ToSchema)]
pub struct Stats {
    pub traces: TraceCounts,
    pub jobs: Vec<NamedCount>,
}

/// Trace counts by source, category, split and outcome; job counts by status.
#[utoipa::path(get, path = "/api/stats", responses((status = 200, body = Stats)))]
pub async fn stats(state: web::Data<AppState>) -> Result<web::Json<Stats>, ApiError> {
    let stats = state
        .with_db(|db| {
            let jobs = db.count_jobs_by_status()?.into_iter().map(|(name, count)| NamedCount { name, count }).collect();
            Ok(Stats { traces: db.trace_counts()?, jobs })
        })
        .await?;
    Ok(web::Json(stats))
}

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
pub struct TracePage {
    pub total: i64,
    pub page: i64,
    pub per_page: i64,
    pub items: Vec<TraceSummary>,
}

/// One page of trace summaries, newest first.
#[utoipa::path(get, path = "/api/traces", params(TraceQuery),
    responses((status = 200, body = TracePage), (status = 400, body = ErrorBody)))]
pub async fn list_traces(
    state: web::Data<AppState>,
    query: web::Query<TraceQuery>,
) -> Result<web::Json<TracePage>, ApiError> {
    let query = query.into_inner();
    let filter =
        TraceFilter::try_from(&query).map_err(|e| WebError::BadRequest(format!("{}: {}", e.field, e.message)))?;
    let (page, per_page) = (query.page(), query.per_page());
    let result = state
        .with_db(move |db| {
            let total = db.count_traces(&filter)?;
            let items = db.list_traces(&filter, per_page, (page - 1) * per_page)?;
            Ok(TracePage { total, page, per_page, items })
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
    mut body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let format: ImportFormat = query
        .format
        .as_deref()
        .unwrap_or("canonical")
        .parse()
        .map_err(|e: String| WebError::BadRequest(format!("format: {e}")))?;
    let upload = save_body(&state, query.name.as_deref().unwrap_or("body.jsonl"), &mut body).await?;
    let job = enqueue_import(&state, upload.0, upload.1, format).await?;
    Ok(HttpResponse::Accepted().json(job))
}

/// Stream a request body into a new file under uploads/.
async fn save_body(
    state: &AppState,
    name: &str,
    body: &mut web::Payload,
) -> Result<(std::path::PathBuf, String), WebError> {
    let upload = new_upload_path(state, name);
    let mut file =
        tokio::fs::File::create(&upload.0).await.map_err(|e| WebError::Internal(format!("upload file: {e}")))?;
    let mut received = 0usize;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| WebError::BadRequest(format!("reading the body: {e}")))?;
        received += chunk.len();
        if received > super::MAX_UPLOAD_BYTES {
            let _ = tokio::fs::remove_file(&upload.0).await;
            return Err(WebError::BadRequest(format!("body over the {}-byte limit", super::MAX_UPLOAD_BYTES)));
        }
        file.write_all(&chunk).await.map_err(|e| WebError::Internal(format!("upload file: {e}")))?;
    }
    file.flush().await.map_err(|e| WebError::Internal(format!("upload file: {e}")))?;
    Ok(upload)
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
    mut body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (path, name) = save_body(&state, query.name.as_deref().unwrap_or("dpo_pairs.jsonl"), &mut body).await?;
    let job = enqueue_dpo_import(&state, path, name).await?;
    Ok(HttpResponse::Accepted().json(job))
}

/// Queue a preference-pair import job for a stored upload and wake the runner.
pub async fn enqueue_dpo_import(
    state: &AppState,
    path: std::path::PathBuf,
    display_name: String,
) -> Result<JobRecord, WebError> {
    let params = crate::jobs::import_dpo::params_value(&crate::jobs::import_dpo::ImportDpoParams {
        path,
        display_name: Some(display_name),
    });
    let job = state.with_db(move |db| Ok(db.insert_job(JobKind::ImportDpo.as_str(), &params, None)?)).await?;
    state.runner.notify();
    Ok(job)
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

/// A fresh path under the uploads dir, and the display name to show for it.
pub fn new_upload_path(state: &AppState, original_name: &str) -> (std::path::PathBuf, String) {
    let dir = state.config.uploads_dir();
    let _ = std::fs::create_dir_all(&dir);
    let safe: String = original_name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') { c } else { '_' })
        .take(80)
        .collect();
    (dir.join(format!("{}-{safe}", ulid::Ulid::new())), original_name.to_string())
}

/// Queue an import job for a stored upload and wake the runner.
pub async fn enqueue_import(
    state: &AppState,
    path: std::path::PathBuf,
    display_name: String,
    format: ImportFormat,
) -> Result<JobRecord, WebError> {
    let params = params_value(&ImportParams { path, format, display_name: Some(display_name) });
    let job = state.with_db(move |db| Ok(db.insert_job(JobKind::ImportTraces.as_str(), &params, None)?)).await?;
    state.runner.notify();
    Ok(job)
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct JobsQuery {
    pub limit: Option<i64>,
}

/// Recent jobs, newest first.
#[utoipa::path(get, path = "/api/jobs", params(JobsQuery), responses((status = 200, body = Vec<JobRecord>)))]
pub async fn list_jobs(
    state: web::Data<AppState>,
    query: web::Query<JobsQuery>,
) -> Result<web::Json<Vec<JobRecord>>, ApiError> {
    let limit = query.limit.unwrap_or(50).clamp(1, 1000);
    Ok(web::Json(state.with_db(move |db| Ok(db.list_jobs(limit)?)).await?))
}

#[derive(Serialize, ToSchema)]
pub struct JobDetail {
    pub job: JobRecord,
    pub logs: Vec<JobLog>,
    pub metrics: Vec<JobMetric>,
}

/// A job with its log tail and metrics.
#[utoipa::path(get, path = "/api/jobs/{id}", params(("id" = String, Path)),
    responses((status = 200, body = JobDetail), (status = 404, body = ErrorBody)))]
pub async fn get_job(state: web::Data<AppState>, id: web::Path<String>) -> Result<web::Json<JobDetail>, ApiError> {
    let id = id.into_inner();
    let detail = state
        .with_db(move |db| {
            let job = db.get_job(&id)?.ok_or_else(|| WebError::NotFound(format!("no job with id {id:?}")))?;
            Ok(JobDetail { logs: db.job_logs(&id, 200)?, metrics: db.job_metrics(&id)?, job })
        })
        .await?;
    Ok(web::Json(detail))
}

/// Cancel a queued job at once, or ask a running one to stop at its next checkpoint.
#[utoipa::path(post, path = "/api/jobs/{id}/cancel", params(("id" = String, Path)),
    responses((status = 200, body = JobRecord), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn cancel_job(state: web::Data<AppState>, id: web::Path<String>) -> Result<web::Json<JobRecord>, ApiError> {
    Ok(web::Json(cancel(&state, id.into_inner()).await?))
}

pub async fn cancel(state: &AppState, id: String) -> Result<JobRecord, WebError> {
    state
        .with_db(move |db| {
            let job = db.request_cancel(&id)?.ok_or_else(|| WebError::NotFound(format!("no job with id {id:?}")))?;
            match job.status {
                JobStatus::Cancelled | JobStatus::Running => Ok(job),
                other => Err(WebError::Conflict(format!("job {id} already ended as {}", other.as_str()))),
            }
        })
        .await
}

/// Queue an interrupted, cancelled or failed job again; it continues from its checkpoint.
#[utoipa::path(post, path = "/api/jobs/{id}/resume", params(("id" = String, Path)),
    responses((status = 200, body = JobRecord), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn resume_job(state: web::Data<AppState>, id: web::Path<String>) -> Result<web::Json<JobRecord>, ApiError> {
    Ok(web::Json(resume(&state, id.into_inner()).await?))
}

pub async fn resume(state: &AppState, id: String) -> Result<JobRecord, WebError> {
    let job = state
        .with_db(move |db| {
            let job = db.get_job(&id)?.ok_or_else(|| WebError::NotFound(format!("no job with id {id:?}")))?;
            if !job.status.is_resumable() {
                return Err(WebError::Conflict(format!(
                    "job {id} is {}; only interrupted, cancelled or failed jobs resume",
                    job.status.as_str()
                )));
            }
            db.requeue_job(&id)?.ok_or_else(|| WebError::NotFound(format!("no job with id {id:?}")))
        })
        .await?;
    state.runner.notify();
    Ok(job)
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct BootstrapRequest {
    /// How many traces to generate (1 to 100000).
    pub traces: u64,
    /// Seed for a reproducible run; random when omitted.
    pub seed: Option<u64>,
    /// Only these templates; all active ones when empty.
    #[serde(default)]
    pub templates: Vec<String>,
}

/// Queue a bootstrap job that generates executable synthetic traces.
#[utoipa::path(post, path = "/api/bootstrap", request_body = BootstrapRequest,
    responses((status = 202, body = JobRecord), (status = 400, body = ErrorBody)))]
pub async fn start_bootstrap(
    state: web::Data<AppState>,
    request: web::Json<BootstrapRequest>,
) -> Result<HttpResponse, ApiError> {
    let request = request.into_inner();
    if !(1..=super::bootstrap::MAX_BOOTSTRAP_TRACES).contains(&request.traces) {
        return Err(
            WebError::BadRequest(format!("traces: must be 1 to {}", super::bootstrap::MAX_BOOTSTRAP_TRACES)).into()
        );
    }
    let params = crate::jobs::bootstrap::BootstrapParams {
        traces: request.traces,
        seed: request.seed.unwrap_or_else(|| u64::from(rand::random::<u32>())),
        templates: request.templates,
    };
    let job = super::bootstrap::enqueue(&state, params).await?;
    Ok(HttpResponse::Accepted().json(job))
}

#[derive(Serialize, ToSchema)]
pub struct TemplateSummary {
    pub name: String,
    pub category: String,
    /// builtin or custom
    pub origin: String,
    pub scenarios: usize,
    pub description: String,
}

/// The active workflow templates.
#[utoipa::path(get, path = "/api/templates", responses((status = 200, body = Vec<TemplateSummary>)))]
pub async fn list_templates(state: web::Data<AppState>) -> Result<web::Json<Vec<TemplateSummary>>, ApiError> {
    let templates = state.with_db(|db| Ok(crate::bootstrap::active_templates(db)?)).await?;
    Ok(web::Json(
        templates
            .into_iter()
            .map(|(t, origin)| TemplateSummary {
                category: t.category().to_string(),
                origin: format!("{origin:?}").to_lowercase(),
                scenarios: t.scenarios.len(),
                description: t.description,
                name: t.name,
            })
            .collect(),
    ))
}

/// One template as JSON.
#[utoipa::path(get, path = "/api/templates/{name}", params(("name" = String, Path)),
    responses((status = 200, description = "The template", body = Object), (status = 404, body = ErrorBody)))]
pub async fn get_template(state: web::Data<AppState>, name: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let name = name.into_inner();
    let templates = state.with_db(|db| Ok(crate::bootstrap::active_templates(db)?)).await?;
    let template = templates
        .into_iter()
        .find(|(t, _)| t.name == name)
        .ok_or_else(|| WebError::NotFound(format!("no template named {name:?}")))?;
    Ok(HttpResponse::Ok().json(template.0))
}

/// Add or replace a template; it is validated first (unknown slots, tools, extractors).
#[utoipa::path(put, path = "/api/templates/{name}", params(("name" = String, Path)),
    request_body(content = Object, description = "A workflow template"),
    responses((status = 200, description = "The stored template", body = Object), (status = 400, body = ErrorBody)))]
pub async fn put_template(
    state: web::Data<AppState>,
    name: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let text = std::str::from_utf8(&body).map_err(|_| WebError::BadRequest("the body is not UTF-8".into()))?;
    let template = super::bootstrap::store_template(&state, text, Some(&name)).await.map_err(WebError::BadRequest)?;
    Ok(HttpResponse::Ok().json(template))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct DatasetRequest {
    pub name: String,
    /// `tiny`, or a model directory / .gguf under `<data dir>/models`.
    #[serde(default = "tiny")]
    pub model: String,
    #[serde(default)]
    pub sources: Vec<String>,
    #[serde(default)]
    pub categories: Vec<String>,
    #[serde(default)]
    pub min_tool_calls: usize,
    #[serde(default)]
    pub exclude_failed: bool,
    pub real_weight: Option<u32>,
    pub val_ratio: Option<f64>,
    pub test_ratio: Option<f64>,
    pub max_seq_len: Option<usize>,
    pub seed: Option<u64>,
}

fn tiny() -> String {
    "tiny".into()
}

/// Queue a dataset build.
#[utoipa::path(post, path = "/api/datasets", request_body = DatasetRequest,
    responses((status = 202, body = JobRecord), (status = 400, body = ErrorBody)))]
pub async fn build_dataset(
    state: web::Data<AppState>,
    request: web::Json<DatasetRequest>,
) -> Result<HttpResponse, ApiError> {
    let request = request.into_inner();
    let model = super::datasets::confined_model(&state, &request.model)
        .map_err(|e| WebError::BadRequest(format!("model: {e}")))?;
    let mut config = crate::dataset::DatasetConfig::new(request.name, model);
    for source in &request.sources {
        config.sources.push(
            Source::parse(source).ok_or_else(|| WebError::BadRequest(format!("sources: unknown source {source:?}")))?,
        );
    }
    config.categories = request.categories;
    config.min_tool_calls = request.min_tool_calls;
    config.exclude_failed = request.exclude_failed;
    config.real_weight = request.real_weight.unwrap_or(config.real_weight);
    config.val_ratio = request.val_ratio.unwrap_or(config.val_ratio);
    config.test_ratio = request.test_ratio.unwrap_or(config.test_ratio);
    config.max_seq_len = request.max_seq_len.unwrap_or(config.max_seq_len);
    config.seed = request.seed.unwrap_or(config.seed);
    config.validate().map_err(|e| WebError::BadRequest(e.to_string()))?;
    let job = super::datasets::enqueue(&state, config).await?;
    Ok(HttpResponse::Accepted().json(job))
}

/// Built datasets, newest first.
#[utoipa::path(get, path = "/api/datasets", responses((status = 200, body = Vec<crate::store::DatasetRow>)))]
pub async fn list_datasets(state: web::Data<AppState>) -> Result<web::Json<Vec<crate::store::DatasetRow>>, ApiError> {
    Ok(web::Json(state.with_db(|db| Ok(db.list_datasets()?)).await?))
}

/// One dataset: its config, statistics (with file checksums) and directory.
#[utoipa::path(get, path = "/api/datasets/{id}", params(("id" = String, Path)),
    responses((status = 200, body = crate::store::DatasetRow), (status = 404, body = ErrorBody)))]
pub async fn get_dataset(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<web::Json<crate::store::DatasetRow>, ApiError> {
    let id = id.into_inner();
    let row = state
        .with_db(move |db| db.get_dataset(&id)?.ok_or_else(|| WebError::NotFound(format!("no dataset with id {id:?}"))))
        .await?;
    Ok(web::Json(row))
}

/// Download one of a dataset's files (config.json, sft.jsonl, tokenizer.json, train.tokens, ...).
#[utoipa::path(get, path = "/api/datasets/{id}/files/{name}", params(("id" = String, Path), ("name" = String, Path)),
    responses((status = 200, description = "The file"), (status = 404, body = ErrorBody)))]
pub async fn get_dataset_file(
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (id, name) = path.into_inner();
    Ok(super::datasets::dataset_file(&state, id, &name).await?)
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct RunRequest {
    /// Only `sft` in this build.
    #[serde(default = "sft")]
    pub phase: String,
    pub dataset: String,
    pub epochs: Option<u32>,
    pub max_steps: Option<u64>,
    pub lr: Option<f64>,
    pub batch_size: Option<usize>,
    pub grad_accum: Option<usize>,
    pub seed: Option<u64>,
}

fn sft() -> String {
    "sft".into()
}

/// Start a training run (a `train` job); its metrics appear under /api/jobs/{id}.
#[utoipa::path(post, path = "/api/runs", request_body = RunRequest,
    responses((status = 202, body = JobRecord), (status = 400, body = ErrorBody)))]
pub async fn start_run(state: web::Data<AppState>, request: web::Json<RunRequest>) -> Result<HttpResponse, ApiError> {
    let request = request.into_inner();
    if request.phase != "sft" {
        return Err(WebError::BadRequest(format!(
            "phase: {:?} is not available in this build yet (only sft)",
            request.phase
        ))
        .into());
    }
    let defaults = crate::train::sft::SftConfig::default();
    let config = crate::train::sft::SftConfig {
        epochs: request.epochs.unwrap_or(defaults.epochs),
        max_steps: request.max_steps,
        lr: request.lr.unwrap_or(defaults.lr),
        batch_size: request.batch_size.unwrap_or(defaults.batch_size),
        grad_accum: request.grad_accum.unwrap_or(defaults.grad_accum),
        seed: request.seed.unwrap_or(defaults.seed),
        ..defaults
    };
    config.validate().map_err(WebError::BadRequest)?;
    let job = super::training::enqueue(&state, request.dataset, config).await?;
    Ok(HttpResponse::Accepted().json(job))
}

/// The capture engine: whether the background watcher runs (pid, roots, interval, started at),
/// files, sessions and traces captured, last scan and capture, last error, the last scan's report
/// (malformed lines, redactions), the `SessionEnd` hook, progress toward retraining.
#[utoipa::path(get, path = "/api/capture", responses((status = 200, description = "The engine status document (as `understudy engine status --json`)", body = Object)))]
pub async fn capture_status(
    state: web::Data<AppState>,
) -> Result<web::Json<crate::capture::engine::EngineStatus>, ApiError> {
    Ok(web::Json(super::capture::status(&state).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct CaptureScanRequest {
    /// A Claude Code directory (e.g. `/home/me/.claude`) that holds `projects/`.
    #[serde(default)]
    pub dir: String,
}

/// Scan a Claude Code directory once, now (incremental: unchanged files are skipped).
#[utoipa::path(post, path = "/api/capture/scan", request_body = CaptureScanRequest,
    responses((status = 200, description = "The scan report (as `understudy capture scan --json`)", body = Object), (status = 400, body = ErrorBody)))]
pub async fn capture_scan(
    state: web::Data<AppState>,
    request: web::Json<CaptureScanRequest>,
) -> Result<web::Json<crate::capture::ScanReport>, ApiError> {
    Ok(web::Json(super::capture::scan(&state, &request.dir).await?))
}

/// Trained models with lineage, newest first.
#[utoipa::path(get, path = "/api/models", responses((status = 200, body = Vec<crate::store::ModelRow>)))]
pub async fn list_models(state: web::Data<AppState>) -> Result<web::Json<Vec<crate::store::ModelRow>>, ApiError> {
    Ok(web::Json(state.with_db(|db| Ok(db.list_models()?)).await?))
}

/// One model.
#[utoipa::path(get, path = "/api/models/{id}", params(("id" = String, Path)),
    responses((status = 200, body = crate::store::ModelRow), (status = 404, body = ErrorBody)))]
pub async fn get_model(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<web::Json<crate::store::ModelRow>, ApiError> {
    let id = id.into_inner();
    let row = state
        .with_db(move |db| db.get_model(&id)?.ok_or_else(|| WebError::NotFound(format!("no model with id {id:?}"))))
        .await?;
    Ok(web::Json(row))
}

/// A JSON body whose fields all have defaults: an empty body means all defaults; a malformed one
/// is a 400 in the error envelope.
fn optional_json<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> Result<T, WebError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| WebError::BadRequest(format!("body: {e}")))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct ExportModelRequest {
    /// GGUF quants to write: f32, f16, q8_0, q4_k_m (default: ["q4_k_m"]).
    pub quants: Option<Vec<String>>,
    /// Name of the export (file names, GGUF general.name); default: the model's name.
    pub name: Option<String>,
}

/// Export a model (an `export` job): HF directory, one GGUF per quant, Modelfile, parity
/// report. The export and its parity appear under /api/exports, also when parity fails.
#[utoipa::path(post, path = "/api/models/{id}/export", params(("id" = String, Path)), request_body = ExportModelRequest,
    responses((status = 202, body = JobRecord), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn start_export(
    state: web::Data<AppState>,
    id: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let request: ExportModelRequest = optional_json(&body)?;
    let quants = super::models::parse_quants(&request.quants.unwrap_or_else(|| vec!["q4_k_m".to_string()]))?;
    let job = super::models::enqueue_export(&state, id.into_inner(), quants, request.name).await?;
    Ok(HttpResponse::Accepted().json(job))
}

/// Exports with their manifest (files, Ollama settings, parity report), newest first.
#[utoipa::path(get, path = "/api/exports", responses((status = 200, body = Vec<crate::store::ExportRow>)))]
pub async fn list_exports(state: web::Data<AppState>) -> Result<web::Json<Vec<crate::store::ExportRow>>, ApiError> {
    Ok(web::Json(state.with_db(|db| Ok(db.list_exports()?)).await?))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct DeployRequest {
    /// The Ollama model name, tagged with the export id and `latest` (default: cc-claude-agent).
    pub name: Option<String>,
    /// Ollama's address, a URL or host:port (default: the server's OLLAMA_HOST, else http://127.0.0.1:11434).
    pub host: Option<String>,
    /// The GGUF quant to deploy (default: the export's first GGUF).
    pub quant: Option<String>,
    /// Send a sample prompt with the default tools through Ollama's chat API afterwards.
    #[serde(default)]
    pub test: bool,
}

/// Register an export with Ollama (a `deploy` job; the result is the deploy report). An export
/// whose parity check failed cannot be deployed (409).
#[utoipa::path(post, path = "/api/exports/{id}/deploy", params(("id" = String, Path)), request_body = DeployRequest,
    responses((status = 202, body = JobRecord), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn start_deploy(
    state: web::Data<AppState>,
    id: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let request: DeployRequest = optional_json(&body)?;
    let choice = super::models::DeployChoice {
        name: request.name,
        host: request.host,
        quant: request.quant,
        test: request.test,
    };
    let job = super::models::enqueue_deploy(&state, id.into_inner(), choice).await?;
    Ok(HttpResponse::Accepted().json(job))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct CaptureStartRequest {
    /// The Claude Code directory to watch (default: the server's).
    #[serde(default)]
    pub dir: Option<String>,
}

/// Start the background watcher (as `understudy engine start`); answers the engine status.
#[utoipa::path(post, path = "/api/capture/engine/start", request_body = CaptureStartRequest,
    responses((status = 200, description = "The engine status after starting", body = Object), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn capture_engine_start(
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<web::Json<crate::capture::engine::EngineStatus>, ApiError> {
    let request: CaptureStartRequest = if body.is_empty() {
        CaptureStartRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| WebError::BadRequest(format!("body: {e}")))?
    };
    super::capture::start_engine(&state, request.dir).await?;
    Ok(web::Json(super::capture::status(&state).await?))
}

/// Stop the background watcher (as `understudy engine stop`); answers the engine status.
#[utoipa::path(post, path = "/api/capture/engine/stop", responses((status = 200, description = "The engine status after stopping", body = Object)))]
pub async fn capture_engine_stop(
    state: web::Data<AppState>,
) -> Result<web::Json<crate::capture::engine::EngineStatus>, ApiError> {
    super::capture::stop_engine(&state).await?;
    Ok(web::Json(super::capture::status(&state).await?))
}

/// Add the `SessionEnd` hook to Claude Code's settings (as `understudy engine install`).
#[utoipa::path(post, path = "/api/capture/hook/install", responses((status = 200, description = "What changed (action, entry, backup)", body = Object), (status = 409, body = ErrorBody)))]
pub async fn capture_hook_install(
    state: web::Data<AppState>,
) -> Result<web::Json<crate::capture::hook::FileChange>, ApiError> {
    Ok(web::Json(super::capture::change_hook(&state, true).await?))
}

/// Remove exactly the hook install added (as `understudy engine uninstall`).
#[utoipa::path(post, path = "/api/capture/hook/uninstall", responses((status = 200, description = "What changed (removed, backup)", body = Object), (status = 409, body = ErrorBody)))]
pub async fn capture_hook_uninstall(
    state: web::Data<AppState>,
) -> Result<web::Json<crate::capture::hook::FileChange>, ApiError> {
    Ok(web::Json(super::capture::change_hook(&state, false).await?))
}
