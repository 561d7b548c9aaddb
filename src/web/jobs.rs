//! Jobs: the Jobs page, a job's page with its live panel (progress, log tail, metric charts),
//! the rows partial other pages poll, cancel and resume from the page and from `/api/jobs`.

use actix_web::{web, HttpResponse};
use askama::Template;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, ErrorBody, PageError};
use super::shared::*;
use super::{AppState, WebError};
use crate::jobs::{JobLog, JobMetric, JobRecord, JobStatus};

pub fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/jobs", web::get().to(jobs))
        .route("/jobs/rows", web::get().to(job_rows))
        .route("/jobs/{id}", web::get().to(job))
        .route("/jobs/{id}/panel", web::get().to(job_panel))
        .route("/jobs/{id}/cancel", web::post().to(cancel_form))
        .route("/jobs/{id}/resume", web::post().to(resume_form));
}

/// Routes under `/api`.
pub fn api_routes(config: &mut web::ServiceConfig) {
    config
        .route("/jobs", web::get().to(list_jobs))
        .route("/jobs/{id}", web::get().to(get_job))
        .route("/jobs/{id}/cancel", web::post().to(cancel_job))
        .route("/jobs/{id}/resume", web::post().to(resume_job));
}

pub struct JobRow {
    pub id: String,
    pub kind: String,
    pub status: &'static str,
    pub percent: Option<u32>,
    pub message: String,
    pub error: Option<String>,
    pub created_at: String,
    pub can_cancel: bool,
    pub can_resume: bool,
    pub finished: bool,
}

impl From<&JobRecord> for JobRow {
    fn from(job: &JobRecord) -> Self {
        JobRow {
            id: job.id.to_string(),
            kind: job.kind.as_str().to_string(),
            status: job.status.as_str(),
            percent: job.percent(),
            message: job.message.clone(),
            error: job.error.clone(),
            created_at: job.created_at.clone(),
            can_cancel: matches!(job.status, JobStatus::Queued | JobStatus::Running) && !job.cancel_requested,
            can_resume: job.status.is_resumable(),
            finished: job.status.is_finished(),
        }
    }
}

#[derive(Template)]
#[template(path = "pages/jobs.html")]
pub struct JobsPage {
    pub nav: Nav,
    pub jobs: Vec<JobRow>,
}

#[derive(Template)]
#[template(path = "components/job_rows.html")]
pub struct JobRowsPartial {
    pub jobs: Vec<JobRow>,
}

#[derive(Template)]
#[template(path = "pages/job.html")]
pub struct JobPage {
    pub nav: Nav,
    pub job: JobRow,
    pub logs: Vec<JobLog>,
    pub result_json: Option<String>,
    pub charts: Vec<LineChart>,
}

#[derive(Template)]
#[template(path = "components/job_panel.html")]
pub struct JobPanelPartial {
    pub job: JobRow,
    pub logs: Vec<JobLog>,
    pub result_json: Option<String>,
    pub charts: Vec<LineChart>,
}

pub(super) async fn recent_jobs(state: &AppState, limit: i64) -> Result<Vec<JobRow>, WebError> {
    recent_jobs_of(state, limit, None).await
}

pub(super) async fn recent_jobs_of(
    state: &AppState,
    limit: i64,
    kind: Option<String>,
) -> Result<Vec<JobRow>, WebError> {
    let fetch = limit * if kind.is_some() { 10 } else { 1 };
    let jobs = state.with_db(move |db| Ok(db.list_jobs(fetch)?)).await?;
    Ok(jobs
        .iter()
        .filter(|j| kind.as_ref().is_none_or(|k| j.kind.as_str() == k))
        .take(limit as usize)
        .map(JobRow::from)
        .collect())
}

#[derive(serde::Deserialize)]
struct RowsQuery {
    limit: Option<i64>,
    /// Only jobs of this kind.
    kind: Option<String>,
}

async fn jobs(state: web::Data<AppState>) -> Result<HttpResponse, PageError> {
    html(JobsPage { nav: Nav::new("/jobs"), jobs: recent_jobs(&state, 50).await? })
}

async fn job_rows(state: web::Data<AppState>, query: web::Query<RowsQuery>) -> Result<HttpResponse, PageError> {
    let query = query.into_inner();
    html(JobRowsPartial { jobs: recent_jobs_of(&state, query.limit.unwrap_or(50).clamp(1, 500), query.kind).await? })
}

async fn load_job(
    state: &AppState,
    id: String,
) -> Result<(JobRecord, Vec<crate::jobs::JobLog>, Vec<LineChart>), WebError> {
    state
        .with_db(move |db| {
            let job = db.get_job(&id)?.ok_or_else(|| WebError::NotFound(format!("no job with id {id:?}")))?;
            let charts = metric_charts(&db.job_metrics(&id)?);
            Ok((job, db.job_logs(&id, 100)?, charts))
        })
        .await
}

/// Line charts of a job's metrics: training's loss with eval loss, learning rate, gradient norm
/// and tokens/s; RL's reward and its components, validity and tool choice, KL, entropy, clip
/// fractions, PPO's value loss, response length, GRPO's zero-variance groups; DPO's margins.
/// A chart whose series were never recorded is left out.
fn metric_charts(metrics: &[crate::jobs::JobMetric]) -> Vec<LineChart> {
    let series = |name: &str| -> Vec<(i64, f64)> {
        metrics.iter().filter(|m| m.name == name).map(|m| (m.step, m.value)).collect()
    };
    const COLORS: [&str; 6] = ["#2f6fdb", "#d9480f", "#2b8a3e", "#7048e8", "#495057", "#c2255c"];
    let chart = |title: &str, names: &[(&'static str, &'static str)]| -> Option<LineChart> {
        let lines = names.iter().zip(COLORS).map(|((label, name), color)| (*label, color, series(name))).collect();
        LineChart::new(title, lines)
    };
    [
        chart("Loss", &[("loss", "loss"), ("eval loss", "eval_loss"), ("policy loss", "policy_loss")]),
        chart(
            "Reward",
            &[
                ("mean", "reward"),
                ("outcome", "reward_outcome"),
                ("format", "reward_format"),
                ("correctness", "reward_correctness"),
                ("alignment", "reward_alignment"),
                ("length", "reward_length"),
            ],
        ),
        chart("Reward spread (std)", &[("reward std", "reward_std")]),
        chart(
            "Validity and tool choice",
            &[("valid", "valid_rate"), ("right first tool", "first_tool_rate"), ("success", "success_rate")],
        ),
        chart("KL to the reference", &[("KL per token", "kl"), ("KL coefficient", "kl_coef")]),
        chart("Value loss", &[("value loss", "value_loss")]),
        chart("Entropy", &[("entropy per token", "entropy")]),
        chart("Clip fraction", &[("policy", "clip_fraction"), ("value", "value_clip_fraction")]),
        chart("Response length (tokens)", &[("tokens per episode", "response_tokens")]),
        chart("Zero-variance groups", &[("groups", "zero_variance_groups")]),
        chart("Preference pairs mined", &[("pairs", "mined_pairs")]),
        chart(
            "Preference margins",
            &[
                ("margin", "reward_margin"),
                ("accuracy", "reward_accuracy"),
                ("chosen", "reward_chosen"),
                ("rejected", "reward_rejected"),
            ],
        ),
        chart("Learning rate", &[("lr", "lr")]),
        chart("Gradient norm", &[("grad norm", "grad_norm")]),
        chart(
            "Tokens per second",
            &[("tokens/s", "tokens_per_second"), ("rollout tokens/s", "rollout_tokens_per_second")],
        ),
    ]
    .into_iter()
    .flatten()
    .collect()
}

fn result_json(job: &JobRecord) -> Option<String> {
    job.result.as_ref().and_then(|r| serde_json::to_string_pretty(&r.to_json()).ok())
}

async fn job(state: web::Data<AppState>, id: web::Path<String>) -> Result<HttpResponse, PageError> {
    let (job, logs, charts) = load_job(&state, id.into_inner()).await?;
    html(JobPage { nav: Nav::new("/jobs"), result_json: result_json(&job), job: JobRow::from(&job), logs, charts })
}

async fn job_panel(state: web::Data<AppState>, id: web::Path<String>) -> Result<HttpResponse, PageError> {
    let (job, logs, charts) = load_job(&state, id.into_inner()).await?;
    html(JobPanelPartial { result_json: result_json(&job), job: JobRow::from(&job), logs, charts })
}

async fn cancel_form(state: web::Data<AppState>, id: web::Path<String>) -> Result<HttpResponse, PageError> {
    let job = cancel(&state, id.into_inner()).await?;
    Ok(see_other(&format!("/jobs/{}", job.id)))
}

async fn resume_form(state: web::Data<AppState>, id: web::Path<String>) -> Result<HttpResponse, PageError> {
    let job = resume(&state, id.into_inner()).await?;
    Ok(see_other(&format!("/jobs/{}", job.id)))
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
