//! The Capture page: the background watcher's state with Start/Stop buttons (they run
//! `capture::engine::start|stop` on the blocking pool, as `understudy engine start|stop` do),
//! the `SessionEnd` hook, the captured sessions and traces, and a form that scans a Claude Code
//! directory now. The scan runs on the blocking pool (it is incremental, so a rescan is cheap);
//! the API (`api`) shares `status` and `scan`.

use std::collections::HashMap;
use std::path::PathBuf;

use actix_web::{web, HttpResponse};
use askama::Template;
use serde::Deserialize;

use super::error::PageError;
use super::pages::{html, see_other, trace_row};
use super::views::*;
use super::{AppState, WebError};
use crate::capture::engine::{self, engine_status, EngineStatus, StartOptions};
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

/// The watcher's status document, read on the blocking pool.
pub async fn status(state: &AppState) -> Result<EngineStatus, WebError> {
    let data_dir = state.config.data_dir().to_path_buf();
    let store = state.store.clone();
    let settings = state.claude_settings.clone();
    web::block(move || engine_status(&data_dir, &store, settings.as_deref()))
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

/// Percent-encode a query value (everything but unreserved characters and `/`).
fn query_escape(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
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
        validate_dir(&dir).map(|root| engine::start(&binary, &data_dir, &[root], &StartOptions::default()))
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
    web::block(move || engine::stop(&data_dir)).await.map_err(blocking_failed)?;
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
        let trigger = std::fs::canonicalize(&data_dir).unwrap_or(data_dir).join(engine::TRIGGER_FILE);
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
