//! The overview: the Dashboard (counts and recent jobs), the API docs page, `/health`,
//! `/api/stats`, and the OpenAPI document at `/openapi.json` that lists every feature's routes.

use actix_web::{web, HttpResponse};
use askama::Template;
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

use super::error::{ApiError, ErrorBody, ErrorDetail, PageError};
use super::jobs::JobRow;
use super::shared::*;
use super::{bootstrap, capture, datasets, jobs, models, playground, traces, training, AppState};
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

/// The Dashboard's one-line view of the champion, the orchestrator's last cycle and capture.
pub struct Glance {
    pub champion: String,
    pub last_cycle: String,
    pub capture: String,
}

#[derive(Template)]
#[template(path = "pages/dashboard.html")]
pub struct DashboardPage {
    pub nav: Nav,
    pub counts: TraceCounts,
    pub groups: Vec<CountGroup>,
    pub jobs: Vec<JobRow>,
    pub glance: Glance,
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
    let orchestrator = super::orchestrator::status_with(&state, 1).await?;
    let capture = super::capture::status(&state).await?;
    let glance = Glance {
        champion: super::orchestrator::champion_line(&orchestrator),
        last_cycle: super::orchestrator::last_cycle_line(&orchestrator),
        capture: match (capture.running, capture.pid) {
            (true, Some(pid)) => format!("watching (pid {pid}); {} traces captured", capture.traces_captured),
            _ => format!("not running; {} traces captured", capture.traces_captured),
        },
    };
    html(DashboardPage { nav: Nav::new("/"), counts, groups, jobs: jobs.iter().map(JobRow::from).collect(), glance })
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
        traces::list_traces,
        traces::get_trace,
        traces::delete_trace,
        traces::export_traces,
        traces::import_traces,
        jobs::list_jobs,
        jobs::get_job,
        jobs::cancel_job,
        jobs::resume_job,
        bootstrap::start_bootstrap,
        bootstrap::list_templates,
        bootstrap::get_template,
        bootstrap::put_template,
        traces::import_pairs,
        traces::list_pairs,
        datasets::build_dataset,
        datasets::list_datasets,
        datasets::get_dataset,
        datasets::get_dataset_file,
        training::start_run,
        models::list_models,
        models::get_model,
        models::start_export,
        models::list_exports,
        models::start_deploy,
        models::start_eval,
        models::list_evals,
        models::get_eval,
        super::rewards::score,
        super::rewards::environment,
        capture::capture_status,
        capture::capture_scan,
        capture::capture_engine_start,
        capture::capture_engine_stop,
        capture::capture_hook_install,
        capture::capture_hook_uninstall,
        super::orchestrator::orchestrator_status,
        super::orchestrator::get_config,
        super::orchestrator::put_config,
        super::orchestrator::run_once,
        super::orchestrator::start_process,
        super::orchestrator::stop_process,
        playground::rate_reply,
        playground::save_preferred,
        playground::list_feedback
    ),
    components(schemas(
        Health,
        Stats,
        TraceCounts,
        NamedCount,
        traces::TraceListPage,
        TraceSummary,
        JobRecord,
        JobStatus,
        jobs::JobDetail,
        JobLog,
        JobMetric,
        ImportReport,
        LineError,
        ImportFormat,
        ErrorBody,
        ErrorDetail,
        BootstrapRequest,
        bootstrap::TemplateSummary,
        traces::PairPage,
        DatasetRequest,
        crate::store::DatasetRow,
        TrainRequest,
        crate::store::ModelRow,
        models::ExportModelRequest,
        crate::store::ExportRow,
        models::DeployBody,
        models::EvalDetail,
        crate::jobs::requests::EvalRequest,
        crate::store::EvalRunRow,
        crate::store::EvalCaseRow,
        super::rewards::RewardRequest,
        super::rewards::RewardResponse,
        super::rewards::EnvironmentResponse,
        crate::eval::suite::EvalCase,
        capture::CaptureScanRequest,
        capture::CaptureStartRequest,
        crate::orchestrator::OrchestratorConfig,
        super::orchestrator::OnceStarted,
        crate::orchestrator::Readiness,
        playground::FeedbackRequest,
        playground::PreferredRequest,
        playground::FeedbackPage,
        crate::store::FeedbackRow
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
