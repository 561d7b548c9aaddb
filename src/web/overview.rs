//! The overview: the Dashboard (counts and recent jobs), the API docs page, `/health`,
//! `/api/stats`, and the OpenAPI document at `/openapi.json` that lists every feature's routes.

use actix_web::{web, HttpResponse};
use askama::Template;
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

use super::bootstrap::*;
use super::capture::*;
use super::datasets::*;
use super::error::{ApiError, ErrorBody, ErrorDetail, PageError};
use super::jobs::*;
use super::models::*;
use super::shared::*;
use super::traces::*;
use super::training::*;
use super::AppState;
use crate::jobs::import_traces::{ImportReport, LineError};
use crate::jobs::requests::{BootstrapRequest, DatasetRequest, TrainRequest};
use crate::jobs::{JobLog, JobMetric, JobRecord, JobStatus};
use crate::store::{NamedCount, TraceCounts, TraceSummary};
use crate::traces::formats::ImportFormat;

pub fn routes(config: &mut web::ServiceConfig) {
    config.route("/", web::get().to(dashboard)).route("/docs", web::get().to(docs));
}

/// Routes under `/api`.
pub fn api_routes(config: &mut web::ServiceConfig) {
    config.route("/stats", web::get().to(stats));
}

pub struct CountGroup {
    pub label: &'static str,
    pub param: &'static str,
    pub rows: Vec<NamedCount>,
}

#[derive(Template)]
#[template(path = "pages/dashboard.html")]
pub struct DashboardPage {
    pub nav: Nav,
    pub counts: TraceCounts,
    pub groups: Vec<CountGroup>,
    pub jobs: Vec<JobRow>,
}

pub struct RouteView {
    pub method: String,
    pub path: String,
    pub summary: String,
    pub params: String,
}

#[derive(Template)]
#[template(path = "pages/docs.html")]
pub struct DocsPage {
    pub nav: Nav,
    pub openapi_version: String,
    pub routes: Vec<RouteView>,
}

async fn dashboard(state: web::Data<AppState>) -> Result<HttpResponse, PageError> {
    let (counts, jobs) = state.with_db(|db| Ok((db.trace_counts()?, db.list_jobs(8)?))).await?;
    let groups = vec![
        CountGroup { label: "source", param: "source", rows: counts.by_source.clone() },
        CountGroup { label: "category", param: "category", rows: counts.by_category.clone() },
        CountGroup { label: "split", param: "split", rows: counts.by_split.clone() },
        CountGroup { label: "outcome", param: "outcome", rows: counts.by_outcome.clone() },
    ];
    html(DashboardPage { nav: Nav::new("/"), counts, groups, jobs: jobs.iter().map(JobRow::from).collect() })
}

async fn docs() -> Result<HttpResponse, PageError> {
    let document = openapi_document();
    let mut routes = Vec::new();
    for (path, item) in document.paths.paths.iter() {
        let operations = [
            ("GET", &item.get),
            ("POST", &item.post),
            ("PUT", &item.put),
            ("DELETE", &item.delete),
            ("PATCH", &item.patch),
        ];
        for (method, operation) in operations {
            if let Some(operation) = operation {
                let summary = operation.summary.clone().or_else(|| operation.description.clone()).unwrap_or_default();
                let params = operation
                    .parameters
                    .as_ref()
                    .map(|ps| ps.iter().map(|p| p.name.clone()).collect::<Vec<_>>().join(", "))
                    .unwrap_or_default();
                routes.push(RouteView { method: method.to_string(), path: path.clone(), summary, params });
            }
        }
    }
    html(DocsPage { nav: Nav::new("/docs"), openapi_version: "3.1".into(), routes })
}

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
        TraceListPage,
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
        TrainRequest,
        crate::store::ModelRow,
        ExportModelRequest,
        crate::store::ExportRow,
        DeployBody,
        CaptureScanRequest,
        CaptureStartRequest
    ))
)]
pub struct ApiDoc;

/// The whole OpenAPI document: the JSON API and the OpenAI-compatible routes.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    let mut document = ApiDoc::openapi();
    document.merge(super::openai::OpenAiDoc::openapi());
    document
}

pub async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok().content_type("application/json").body(openapi_document().to_pretty_json().unwrap_or_default())
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
