//! HTML pages: Dashboard, Traces (+ htmx partial), a trace, Import (upload form), Jobs (+ live
//! partials), API docs. Every page works without JavaScript; htmx only refreshes parts.

use actix_multipart::Multipart;
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use askama::Template;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use super::api::{self, TraceQuery};
use super::error::PageError;
use super::views::*;
use super::{AppState, WebError};
use crate::jobs::JobRecord;
use crate::store::{TraceFilter, TraceSummary};
use crate::traces::formats::ImportFormat;
use crate::traces::{OutcomeStatus, Role, Source, Split, Trace};

/// The import form's choice for Command Center / TRL preference pairs.
const DPO_CHOICE: &str = "dpo";

/// Longest text shown inline in a conversation before it is cut.
const MAX_SHOWN_CONTENT: usize = 20_000;

pub fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/", web::get().to(dashboard))
        .route("/traces", web::get().to(traces))
        .route("/traces/{id}", web::get().to(trace))
        .route("/traces/{id}/delete", web::post().to(delete_trace))
        .route("/import", web::get().to(import_form))
        .route("/import", web::post().to(import_upload))
        .route("/jobs", web::get().to(jobs))
        .route("/jobs/rows", web::get().to(job_rows))
        .route("/jobs/{id}", web::get().to(job))
        .route("/jobs/{id}/panel", web::get().to(job_panel))
        .route("/jobs/{id}/cancel", web::post().to(cancel_job))
        .route("/jobs/{id}/resume", web::post().to(resume_job))
        .route("/docs", web::get().to(docs));
}

pub(super) fn html(template: impl Template) -> Result<HttpResponse, PageError> {
    let body = template.render().map_err(|e| WebError::Internal(format!("template: {e}")))?;
    Ok(HttpResponse::Ok().content_type("text/html; charset=utf-8").body(body))
}

pub(super) fn see_other(location: &str) -> HttpResponse {
    HttpResponse::SeeOther().insert_header((header::LOCATION, location.to_string())).finish()
}

fn is_htmx(request: &HttpRequest) -> bool {
    request.headers().contains_key("hx-request")
}

pub async fn not_found(request: HttpRequest) -> Result<HttpResponse, PageError> {
    Err(WebError::NotFound(format!("no page at {}", request.path())).into())
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

pub(super) fn message_views(trace: &Trace) -> Vec<MessageView> {
    trace
        .messages
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
        messages: message_views(&trace),
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

async fn delete_trace(state: web::Data<AppState>, id: web::Path<String>) -> Result<HttpResponse, PageError> {
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
                let (path, shown) = api::new_upload_path(&state, &original);
                let mut file =
                    tokio::fs::File::create(&path).await.map_err(|e| WebError::Internal(format!("upload: {e}")))?;
                let mut size = 0usize;
                while let Some(chunk) = field.next().await {
                    let chunk = chunk.map_err(|e| WebError::BadRequest(format!("upload interrupted: {e}")))?;
                    size += chunk.len();
                    file.write_all(&chunk).await.map_err(|e| WebError::Internal(format!("upload: {e}")))?;
                }
                file.flush().await.map_err(|e| WebError::Internal(format!("upload: {e}")))?;
                upload = Some((path, shown, size));
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
    let job = if is_dpo {
        api::enqueue_dpo_import(&state, path, shown).await?
    } else {
        api::enqueue_import(&state, path, shown, format.expect("checked above")).await?
    };
    Ok(see_other(&format!("/jobs/{}", job.id)))
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
        .filter(|j| kind.as_ref().is_none_or(|k| &j.kind == k))
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

/// Line charts of a job's metrics (training: loss with eval loss, learning rate, gradient norm,
/// tokens/s).
fn metric_charts(metrics: &[crate::jobs::JobMetric]) -> Vec<LineChart> {
    let series = |name: &str| -> Vec<(i64, f64)> {
        metrics.iter().filter(|m| m.name == name).map(|m| (m.step, m.value)).collect()
    };
    [
        LineChart::new(
            "Loss",
            vec![("loss", "#2f6fdb", series("loss")), ("eval loss", "#d9480f", series("eval_loss"))],
        ),
        LineChart::new("Learning rate", vec![("lr", "#2b8a3e", series("lr"))]),
        LineChart::new("Gradient norm", vec![("grad norm", "#7048e8", series("grad_norm"))]),
        LineChart::new("Tokens per second", vec![("tokens/s", "#495057", series("tokens_per_second"))]),
    ]
    .into_iter()
    .flatten()
    .collect()
}

fn result_json(job: &JobRecord) -> Option<String> {
    job.result.as_ref().and_then(|r| serde_json::to_string_pretty(r).ok())
}

async fn job(state: web::Data<AppState>, id: web::Path<String>) -> Result<HttpResponse, PageError> {
    let (job, logs, charts) = load_job(&state, id.into_inner()).await?;
    html(JobPage { nav: Nav::new("/jobs"), result_json: result_json(&job), job: JobRow::from(&job), logs, charts })
}

async fn job_panel(state: web::Data<AppState>, id: web::Path<String>) -> Result<HttpResponse, PageError> {
    let (job, logs, charts) = load_job(&state, id.into_inner()).await?;
    html(JobPanelPartial { result_json: result_json(&job), job: JobRow::from(&job), logs, charts })
}

async fn cancel_job(state: web::Data<AppState>, id: web::Path<String>) -> Result<HttpResponse, PageError> {
    let job = api::cancel(&state, id.into_inner()).await?;
    Ok(see_other(&format!("/jobs/{}", job.id)))
}

async fn resume_job(state: web::Data<AppState>, id: web::Path<String>) -> Result<HttpResponse, PageError> {
    let job = api::resume(&state, id.into_inner()).await?;
    Ok(see_other(&format!("/jobs/{}", job.id)))
}

async fn docs() -> Result<HttpResponse, PageError> {
    let document = super::api::openapi_document();
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
