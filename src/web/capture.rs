//! The Capture page: the background watcher's state with Start/Stop buttons (they run
//! `capture::watcher::start|stop` on the blocking pool, as `understudy engine start|stop` do),
//! the `SessionEnd` hook, the captured sessions and traces, and a form that scans a Claude Code
//! directory now. The scan runs on the blocking pool (it is incremental, so a rescan is cheap);
//! the API (`api`) shares `status` and `scan`.

use std::collections::HashMap;
use std::path::PathBuf;

use actix_web::{web, HttpResponse};
use askama::Template;
use serde::Deserialize;
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody, PageError};
use super::shared::*;
use super::traces::{trace_row, TraceRow};
use super::{AppState, WebError};
use crate::capture::watcher::{self, watcher_status, StartOptions, WatcherStatus};
use crate::capture::{self, CaptureError, CaptureSettings, ScanReport};
use crate::store::{CaptureSession, TraceFilter, TraceSummary};
use crate::traces::Source;

/// Rows shown in each list.
const LIST_LIMIT: i64 = 20;

pub fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/capture", web::get().to(page))
        .route("/capture/scan", web::post().to(scan_form))
        .route("/capture/engine/start", web::post().to(engine_start_form))
        .route("/capture/engine/stop", web::post().to(engine_stop_form))
        .route("/capture/hook/install", web::post().to(hook_install_form))
        .route("/capture/hook/uninstall", web::post().to(hook_uninstall_form));
}

/// Routes under `/api`.
pub fn api_routes(config: &mut web::ServiceConfig) {
    config
        .route("/capture", web::get().to(capture_status))
        .route("/capture/scan", web::post().to(capture_scan))
        .route("/capture/engine/start", web::post().to(capture_engine_start))
        .route("/capture/engine/stop", web::post().to(capture_engine_stop))
        .route("/capture/hook/install", web::post().to(capture_hook_install))
        .route("/capture/hook/uninstall", web::post().to(capture_hook_uninstall));
}

/// The watcher's status document, read on the blocking pool.
pub async fn status(state: &AppState) -> Result<WatcherStatus, WebError> {
    let data_dir = state.config.data_dir().to_path_buf();
    let store = state.store.clone();
    let settings = state.claude_settings.clone();
    web::block(move || watcher_status(&data_dir, &store, settings.as_deref()))
        .await
        .map_err(|e| WebError::Internal(format!("blocking task failed: {e}")))?
        .map_err(|e| WebError::Internal(e.to_string()))
}

/// A directory a scan may read: it exists and holds `projects/`. The error names the field.
pub fn validate_dir(dir: &str) -> Result<PathBuf, String> {
    let dir = dir.trim();
    if dir.is_empty() {
        return Err("dir: enter the Claude Code directory (the one that holds projects/)".into());
    }
    let path = PathBuf::from(dir);
    if !path.is_dir() {
        return Err(format!("dir: {dir} is not a directory"));
    }
    if !path.join("projects").is_dir() {
        return Err(format!("dir: {dir} has no projects/ directory"));
    }
    Ok(path)
}

/// One scan of `dir` with the default settings; a bad directory is a `BadRequest` naming `dir`.
pub async fn scan(state: &AppState, dir: &str) -> Result<ScanReport, WebError> {
    let (store, dir) = (state.store.clone(), dir.to_string());
    // Checking the directory touches the file system too: off the async workers with the scan.
    let report =
        web::block(move || validate_dir(&dir).map(|root| capture::scan(&store, &CaptureSettings::new(vec![root]))))
            .await
            .map_err(|e| WebError::Internal(format!("blocking task failed: {e}")))?
            .map_err(WebError::BadRequest)?;
    report.map_err(|error| match error {
        error @ CaptureError::NoProjects(_) => WebError::BadRequest(format!("dir: {error}")),
        CaptureError::Store(store) => store.into(),
        other => WebError::Internal(other.to_string()),
    })
}

/// The directory the form offers: the one holding the known settings file (`~/.claude`).
fn default_dir(state: &AppState) -> String {
    state.claude_settings.as_deref().and_then(|p| p.parent()).map(|p| p.display().to_string()).unwrap_or_default()
}

async fn render(
    state: &AppState,
    scanned: Option<String>,
    dir: String,
    dir_error: Option<String>,
) -> Result<CapturePage, WebError> {
    render_with(state, scanned, dir, dir_error, None).await
}

async fn render_with(
    state: &AppState,
    scanned: Option<String>,
    dir: String,
    dir_error: Option<String>,
    engine_error: Option<String>,
) -> Result<CapturePage, WebError> {
    let status = status(state).await?;
    let (sessions, traces): (Vec<CaptureSession>, Vec<TraceSummary>) = state
        .with_db(|db| {
            let filter = TraceFilter { source: Some(Source::ClaudeCode), ..TraceFilter::default() };
            Ok((db.capture_sessions(LIST_LIMIT)?, db.list_traces(&filter, LIST_LIMIT, 0)?))
        })
        .await?;
    let engine_line = match (&status.pid, &status.started_at, &status.interval) {
        (Some(pid), Some(started_at), Some(interval)) => {
            format!("running (pid {pid}) since {started_at}, every {interval}s")
        }
        _ => "not running".to_string(),
    };
    let from_report = |key: &str| {
        status
            .last_report
            .as_ref()
            .and_then(|r| r.get(key))
            .and_then(serde_json::Value::as_u64)
            .map_or_else(|| "—".to_string(), |n| n.to_string())
    };
    Ok(CapturePage {
        nav: Nav::new("/capture"),
        engine_line,
        running: status.running,
        can_start: state.understudy_binary.is_some(),
        engine_error,
        roots: status.roots.iter().flatten().map(|r| r.display().to_string()).collect(),
        last_scan_at: status.last_scan_at.clone().unwrap_or_else(|| "never".into()),
        last_capture_at: status.last_capture_at.clone().unwrap_or_else(|| "never".into()),
        last_error: status.last_error.clone(),
        files: status.files,
        n_sessions: status.sessions,
        traces_captured: status.traces_captured,
        threshold: status.orchestrator.threshold,
        new_traces: status.orchestrator.new_traces,
        malformed_lines: from_report("malformed_lines"),
        redactions: from_report("redactions"),
        hook_installed: status.hook_installed,
        settings_path: status.settings.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
        sessions: sessions
            .into_iter()
            .map(|s| CaptureSessionRow {
                session_id: s.session_id,
                project: s.project,
                git_branch: s.git_branch,
                last_at: s.last_at,
                n_traces: s.n_traces,
            })
            .collect(),
        traces: traces.into_iter().map(trace_row).collect(),
        scanned,
        dir,
        dir_error,
    })
}

/// The summary a scan's redirect carries back to the page.
#[derive(Debug, Default, Deserialize)]
struct PageQuery {
    scanned: Option<String>,
    files: Option<u64>,
    sessions: Option<u64>,
    new: Option<u64>,
    updated: Option<u64>,
    malformed: Option<u64>,
    redactions: Option<u64>,
}

async fn page(state: web::Data<AppState>, query: web::Query<PageQuery>) -> Result<HttpResponse, PageError> {
    let q = query.into_inner();
    let scanned = q.scanned.as_ref().map(|dir| {
        let n = |v: Option<u64>| v.unwrap_or(0);
        format!(
            "Scanned {dir}: {} files, {} sessions; {} new traces, {} updated; {} malformed lines, {} redactions.",
            n(q.files),
            n(q.sessions),
            n(q.new),
            n(q.updated),
            n(q.malformed),
            n(q.redactions)
        )
    });
    let dir = q.scanned.clone().unwrap_or_else(|| default_dir(&state));
    html(render(&state, scanned, dir, None).await?)
}

async fn scan_form(
    state: web::Data<AppState>,
    values: web::Form<HashMap<String, String>>,
) -> Result<HttpResponse, PageError> {
    let dir = values.get("dir").cloned().unwrap_or_default();
    match scan(&state, &dir).await {
        Ok(report) => {
            let location = format!(
                "/capture?scanned={}&files={}&sessions={}&new={}&updated={}&malformed={}&redactions={}",
                query_escape(dir.trim()),
                report.files,
                report.sessions,
                report.traces_new,
                report.traces_updated,
                report.malformed_lines,
                report.redactions
            );
            Ok(see_other(&location))
        }
        Err(WebError::BadRequest(message)) => {
            let body = render(&state, None, dir, Some(message))
                .await?
                .render()
                .map_err(|e| WebError::Internal(e.to_string()))?;
            Ok(HttpResponse::UnprocessableEntity().content_type("text/html; charset=utf-8").body(body))
        }
        Err(other) => Err(other.into()),
    }
}

fn blocking_failed(error: actix_web::error::BlockingError) -> WebError {
    WebError::Internal(format!("blocking task failed: {error}"))
}

/// Start the watcher on `dir` (else the page's default), as `engine start` does; shared with
/// the API. A bad directory is a `BadRequest` naming `dir`.
pub async fn start_engine(state: &AppState, dir: Option<String>) -> Result<(), WebError> {
    let Some(binary) = state.understudy_binary.clone() else {
        return Err(WebError::Conflict(
            "this server does not know the understudy binary, so it cannot start the capture engine: run `understudy engine start`".into(),
        ));
    };
    let dir = dir.map(|d| d.trim().to_string()).filter(|d| !d.is_empty()).unwrap_or_else(|| default_dir(state));
    let data_dir = state.config.data_dir().to_path_buf();
    web::block(move || {
        validate_dir(&dir).map(|root| watcher::start(&binary, &data_dir, &[root], &StartOptions::default()))
    })
    .await
    .map_err(blocking_failed)?
    .map_err(WebError::BadRequest)?
    .map_err(|e| WebError::Internal(e.to_string()))?;
    Ok(())
}

/// Stop the watcher, as `engine stop` does (nothing to do when it does not run).
pub async fn stop_engine(state: &AppState) -> Result<(), WebError> {
    let data_dir = state.config.data_dir().to_path_buf();
    web::block(move || watcher::stop(&data_dir)).await.map_err(blocking_failed)?;
    Ok(())
}

async fn engine_start_form(
    state: web::Data<AppState>,
    values: web::Form<HashMap<String, String>>,
) -> Result<HttpResponse, PageError> {
    let dir = values.get("dir").cloned();
    match start_engine(&state, dir.clone()).await {
        Ok(()) => Ok(see_other("/capture")),
        Err(WebError::BadRequest(message)) => {
            let page = render_with(&state, None, dir.unwrap_or_default(), None, Some(message)).await?;
            let body = page.render().map_err(|e| WebError::Internal(e.to_string()))?;
            Ok(HttpResponse::UnprocessableEntity().content_type("text/html; charset=utf-8").body(body))
        }
        Err(other) => Err(other.into()),
    }
}

async fn engine_stop_form(state: web::Data<AppState>) -> Result<HttpResponse, PageError> {
    stop_engine(&state).await?;
    Ok(see_other("/capture"))
}

/// Install or remove the `SessionEnd` hook in the Claude Code settings file the server knows,
/// exactly as `engine install|uninstall` do; shared with the API.
pub async fn change_hook(state: &AppState, install: bool) -> Result<crate::capture::hook::FileChange, WebError> {
    let Some(path) = state.claude_settings.clone() else {
        return Err(WebError::Conflict(
            "this server does not know Claude Code's settings file; use `understudy engine install --settings PATH`"
                .into(),
        ));
    };
    let data_dir = state.config.data_dir().to_path_buf();
    web::block(move || {
        let trigger = std::fs::canonicalize(&data_dir).unwrap_or(data_dir).join(watcher::TRIGGER_FILE);
        if install {
            crate::capture::hook::install_file(&path, &trigger)
        } else {
            crate::capture::hook::uninstall_file(&path)
        }
    })
    .await
    .map_err(blocking_failed)?
    .map_err(|e| WebError::BadRequest(e.to_string()))
}

async fn hook_install_form(state: web::Data<AppState>) -> Result<HttpResponse, PageError> {
    change_hook(&state, true).await?;
    Ok(see_other("/capture"))
}

async fn hook_uninstall_form(state: web::Data<AppState>) -> Result<HttpResponse, PageError> {
    change_hook(&state, false).await?;
    Ok(see_other("/capture"))
}

pub struct CaptureSessionRow {
    pub session_id: String,
    pub project: String,
    pub git_branch: String,
    pub last_at: String,
    pub n_traces: i64,
}

/// The Capture page: the background watcher (with Start/Stop), the hook, what was captured, the scan form.
#[derive(Template)]
#[template(path = "pages/capture.html")]
pub struct CapturePage {
    pub nav: Nav,
    /// "running (pid N) since T, every Ns" or "not running".
    pub engine_line: String,
    pub running: bool,
    /// Whether the server knows the binary the Start button runs.
    pub can_start: bool,
    /// Why the Start button's directory was refused.
    pub engine_error: Option<String>,
    pub roots: Vec<String>,
    pub last_scan_at: String,
    pub last_capture_at: String,
    pub last_error: Option<String>,
    pub files: usize,
    pub n_sessions: usize,
    pub traces_captured: i64,
    pub threshold: i64,
    /// New traces (all sources) toward the orchestrator's next cycle.
    pub new_traces: i64,
    /// From the watcher's last scan: "—" when it has not scanned.
    pub malformed_lines: String,
    pub redactions: String,
    pub hook_installed: bool,
    /// Empty when the server does not know the settings file.
    pub settings_path: String,
    pub sessions: Vec<CaptureSessionRow>,
    pub traces: Vec<TraceRow>,
    /// The summary of a scan this page just ran.
    pub scanned: Option<String>,
    pub dir: String,
    pub dir_error: Option<String>,
}

/// The capture engine: whether the background watcher runs (pid, roots, interval, started at),
/// files, sessions and traces captured, last scan and capture, last error, the last scan's report
/// (malformed lines, redactions), the `SessionEnd` hook, progress toward retraining.
#[utoipa::path(get, path = "/api/capture", responses((status = 200, description = "The engine status document (as `understudy engine status --json`)", body = Object)))]
pub async fn capture_status(
    state: web::Data<AppState>,
) -> Result<web::Json<crate::capture::watcher::WatcherStatus>, ApiError> {
    Ok(web::Json(status(&state).await?))
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
    Ok(web::Json(scan(&state, &request.dir).await?))
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
) -> Result<web::Json<crate::capture::watcher::WatcherStatus>, ApiError> {
    let request: CaptureStartRequest = if body.is_empty() {
        CaptureStartRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| WebError::BadRequest(format!("body: {e}")))?
    };
    start_engine(&state, request.dir).await?;
    Ok(web::Json(status(&state).await?))
}

/// Stop the background watcher (as `understudy engine stop`); answers the engine status.
#[utoipa::path(post, path = "/api/capture/engine/stop", responses((status = 200, description = "The engine status after stopping", body = Object)))]
pub async fn capture_engine_stop(
    state: web::Data<AppState>,
) -> Result<web::Json<crate::capture::watcher::WatcherStatus>, ApiError> {
    stop_engine(&state).await?;
    Ok(web::Json(status(&state).await?))
}

/// Add the `SessionEnd` hook to Claude Code's settings (as `understudy engine install`).
#[utoipa::path(post, path = "/api/capture/hook/install", responses((status = 200, description = "What changed (action, entry, backup)", body = Object), (status = 409, body = ErrorBody)))]
pub async fn capture_hook_install(
    state: web::Data<AppState>,
) -> Result<web::Json<crate::capture::hook::FileChange>, ApiError> {
    Ok(web::Json(change_hook(&state, true).await?))
}

/// Remove exactly the hook install added (as `understudy engine uninstall`).
#[utoipa::path(post, path = "/api/capture/hook/uninstall", responses((status = 200, description = "What changed (removed, backup)", body = Object), (status = 409, body = ErrorBody)))]
pub async fn capture_hook_uninstall(
    state: web::Data<AppState>,
) -> Result<web::Json<crate::capture::hook::FileChange>, ApiError> {
    Ok(web::Json(change_hook(&state, false).await?))
}
