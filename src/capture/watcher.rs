//! The capture watcher: its files in the data dir and the status built from them, shared by
//! `understudy engine status` and the web's Capture page: `capture-engine.pid` (who runs, since
//! when, watching what), `capture-engine.json` (what the last scan saw), `capture-engine.trigger`
//! (touched by the `SessionEnd` hook). `start` and `stop` spawn and end the watcher (`engine run`
//! of the given binary) for both `understudy engine start|stop` and the Capture page's buttons.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{hook, CaptureError};
use crate::daemon::runs_subcommand;
pub use crate::daemon::{alive, read_json, write_json, StopOutcome};
use crate::store::{Store, TraceFilter};
use crate::traces::{now_rfc3339, Source};

pub const PID_FILE: &str = "capture-engine.pid";
pub const STATE_FILE: &str = "capture-engine.json";
pub const TRIGGER_FILE: &str = "capture-engine.trigger";
pub const LOG_FILE: &str = "capture-engine.log";

/// `<data_dir>/capture-engine.pid`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PidFile {
    pub pid: u32,
    pub started_at: String,
    pub roots: Vec<PathBuf>,
    pub interval: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Totals {
    pub scans: u64,
    pub traces_new: u64,
    pub traces_updated: u64,
    pub malformed_lines: u64,
    pub redactions: u64,
}

/// `<data_dir>/capture-engine.json`: what the running (or last) watcher saw.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WatcherState {
    pub pid: u32,
    pub started_at: String,
    pub last_scan_at: Option<String>,
    /// The last scan that stored or updated a trace.
    pub last_capture_at: Option<String>,
    pub last_error: Option<String>,
    pub totals: Totals,
    pub last_report: Option<Value>,
}

/// Progress toward the orchestrator's next cycle (traces of every source count).
#[derive(Debug, Clone, Serialize)]
pub struct OrchestratorProgress {
    pub threshold: i64,
    pub new_traces: i64,
    pub missing: i64,
}

/// `engine status --json` and `GET /api/capture`.
#[derive(Debug, Clone, Serialize)]
pub struct WatcherStatus {
    pub running: bool,
    pub pid: Option<u32>,
    pub started_at: Option<String>,
    pub roots: Option<Vec<PathBuf>>,
    pub interval: Option<u64>,
    pub files: usize,
    pub sessions: usize,
    pub traces_captured: i64,
    pub last_scan_at: Option<String>,
    pub last_capture_at: Option<String>,
    pub last_error: Option<String>,
    pub totals: Option<Totals>,
    pub last_report: Option<Value>,
    pub hook_installed: bool,
    pub settings: Option<PathBuf>,
    pub orchestrator: OrchestratorProgress,
}

/// The pid file of a watcher that is running now.
pub fn running(data_dir: &Path) -> Option<PidFile> {
    read_json::<PidFile>(&data_dir.join(PID_FILE)).filter(|p| alive(p.pid) && runs_subcommand(p.pid, ["engine", "run"]))
}

/// Whether the watcher runs, what it tracks and captured, and whether the hook is in the
/// settings file at `settings_path` (not checked when `None`).
pub fn watcher_status(
    data_dir: &Path,
    store: &Store,
    settings_path: Option<&Path>,
) -> Result<WatcherStatus, CaptureError> {
    let pid_file = running(data_dir);
    let state: Option<WatcherState> = read_json(&data_dir.join(STATE_FILE));
    let db = store.connect()?;
    let files = db.capture_files()?;
    let mut sessions: Vec<&str> = files.iter().filter_map(|f| f.session_id.as_deref()).collect();
    sessions.sort_unstable();
    sessions.dedup();
    let captured = db.count_traces(&TraceFilter { source: Some(Source::ClaudeCode), ..TraceFilter::default() })?;
    let last_capture_at = state
        .as_ref()
        .and_then(|s| s.last_capture_at.clone())
        .or_else(|| files.iter().filter(|f| f.n_traces > 0).map(|f| f.scanned_at.clone()).max());
    let readiness = crate::orchestrator::readiness(&db, &crate::orchestrator::config::load(&db)?)?;
    let hook_installed =
        settings_path.and_then(|p| hook::read_settings(p).ok()).is_some_and(|(doc, _)| hook::is_installed(&doc));
    Ok(WatcherStatus {
        running: pid_file.is_some(),
        pid: pid_file.as_ref().map(|p| p.pid),
        started_at: pid_file.as_ref().map(|p| p.started_at.clone()),
        roots: pid_file.as_ref().map(|p| p.roots.clone()),
        interval: pid_file.as_ref().map(|p| p.interval),
        files: files.len(),
        sessions: sessions.len(),
        traces_captured: captured,
        last_scan_at: state.as_ref().and_then(|s| s.last_scan_at.clone()),
        last_capture_at,
        last_error: state.as_ref().and_then(|s| s.last_error.clone()),
        totals: state.as_ref().map(|s| s.totals.clone()),
        last_report: state.and_then(|s| s.last_report),
        hook_installed,
        settings: settings_path.map(Path::to_path_buf),
        orchestrator: OrchestratorProgress {
            threshold: readiness.threshold,
            new_traces: readiness.new_traces,
            missing: readiness.missing,
        },
    })
}

/// How `start` configures the watcher (the `engine start` flags besides the roots).
#[derive(Debug, Clone)]
pub struct StartOptions {
    /// Seconds between rescans (at least 1).
    pub interval: u64,
    pub max_tool_result_bytes: usize,
    /// Extra `NAME=REGEX` redaction patterns.
    pub redact: Vec<String>,
    pub no_default_redactions: bool,
}

impl Default for StartOptions {
    fn default() -> StartOptions {
        StartOptions {
            interval: 30,
            max_tool_result_bytes: super::DEFAULT_MAX_TOOL_RESULT_BYTES,
            redact: Vec::new(),
            no_default_redactions: false,
        }
    }
}

#[derive(Debug)]
pub enum StartOutcome {
    AlreadyRunning(PidFile),
    Started { pid_file: PidFile, log: PathBuf },
}

#[derive(Debug, thiserror::Error)]
pub enum WatcherError {
    #[error("--interval must be at least 1 second")]
    BadInterval,
    #[error("the capture engine exited at once ({exit}); see {}", .log.display())]
    ExitedAtOnce { exit: std::process::ExitStatus, log: PathBuf },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Start `<binary> --data-dir <data_dir> engine run ...` detached, watching `roots`, unless a
/// watcher already runs for this data dir. The data dir is created and made absolute and so are
/// the roots, so the child depends on no cwd; it reads no `CLAUDE_CONFIG_DIR`.
pub fn start(
    binary: &Path,
    data_dir: &Path,
    roots: &[PathBuf],
    options: &StartOptions,
) -> Result<StartOutcome, WatcherError> {
    if options.interval < 1 {
        return Err(WatcherError::BadInterval);
    }
    let data_dir = crate::daemon::absolute_data_dir(data_dir)?;
    if let Some(pid_file) = running(&data_dir) {
        return Ok(StartOutcome::AlreadyRunning(pid_file));
    }
    let roots = roots.iter().map(std::path::absolute).collect::<Result<Vec<_>, _>>()?;
    let log_path = data_dir.join(LOG_FILE);
    let mut args: Vec<std::ffi::OsString> =
        ["engine", "run", "--interval", &options.interval.to_string()].iter().map(Into::into).collect();
    args.push(format!("--max-tool-result-bytes={}", options.max_tool_result_bytes).into());
    for spec in &options.redact {
        args.push(format!("--redact={spec}").into());
    }
    if options.no_default_redactions {
        args.push("--no-default-redactions".into());
    }
    for root in &roots {
        args.push("--root".into());
        args.push(root.into());
    }
    let mut child = crate::daemon::spawn(binary, &data_dir, &args, &log_path)?;
    let pid_file = PidFile { pid: child.id(), started_at: now_rfc3339(), roots, interval: options.interval };
    write_json(&data_dir.join(PID_FILE), &pid_file)?;
    // A child that fails at once (a bad pattern, an unwritable store) says so here.
    if let Some(exit) = crate::daemon::exited_at_once(&mut child)? {
        let _ = std::fs::remove_file(data_dir.join(PID_FILE));
        return Err(WatcherError::ExitedAtOnce { exit, log: log_path });
    }
    Ok(StartOutcome::Started { pid_file, log: log_path })
}

/// Stop the watcher of `data_dir`: SIGTERM, then SIGKILL after 5 s; removes the pid file.
/// Safe to force: every scan writes a file's traces and progress in one transaction.
pub fn stop(data_dir: &Path) -> StopOutcome {
    let pid_path = data_dir.join(PID_FILE);
    let Some(pid_file) = running(data_dir) else {
        let _ = std::fs::remove_file(&pid_path);
        return StopOutcome::NotRunning;
    };
    crate::daemon::terminate(pid_file.pid, &pid_path, Duration::from_secs(5))
}

/// File-system notifications for the watched roots (inotify on Linux, via `notify`): the flag
/// is set when a transcript is created, written or removed. The periodic rescan stays as the
/// fallback when notifications are unavailable (None) or missed.
pub fn watch(roots: &[PathBuf]) -> Option<(notify::RecommendedWatcher, std::sync::Arc<std::sync::atomic::AtomicBool>)> {
    use notify::{EventKind, RecursiveMode, Watcher};
    let changed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = std::sync::Arc::clone(&changed);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        let transcript = event.paths.iter().any(|p| p.extension().is_some_and(|e| e == "jsonl"));
        if transcript && matches!(event.kind, EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_)) {
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    })
    .map_err(|e| tracing::warn!("no file-system notifications ({e}); rescanning on the interval only"))
    .ok()?;
    let mut watching = 0;
    for root in roots {
        match watcher.watch(&root.join("projects"), RecursiveMode::Recursive) {
            Ok(()) => watching += 1,
            Err(e) => tracing::warn!("cannot watch {}: {e}; rescanning on the interval", root.display()),
        }
    }
    (watching > 0).then_some((watcher, changed))
}
