//! The capture watcher: its files in the data dir and the status built from them, shared by
//! `understudy engine status` and the web's Capture page: `capture-engine.pid` (who runs, since
//! when, watching what), `capture-engine.json` (what the last scan saw), `capture-engine.trigger`
//! (touched by the `SessionEnd` hook). `start` and `stop` spawn and end the watcher (`engine run`
//! of the given binary) for both `understudy engine start|stop` and the Capture page's buttons.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{hook, CaptureError};
use crate::store::{Store, TraceFilter};
use crate::traces::{now_rfc3339, Source};

pub const PID_FILE: &str = "capture-engine.pid";
pub const STATE_FILE: &str = "capture-engine.json";
pub const TRIGGER_FILE: &str = "capture-engine.trigger";
pub const LOG_FILE: &str = "capture-engine.log";
/// Captured traces that make the orchestrator retrain (spec 3.3); reported as progress.
pub const TRAINING_THRESHOLD: i64 = 200;

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

/// Progress toward the next retraining.
#[derive(Debug, Clone, Serialize)]
pub struct OrchestratorProgress {
    pub threshold: i64,
    pub captured_since_last_training: i64,
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

pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// Write through a temp file and a rename, so a reader never sees half a document.
pub fn write_json(path: &Path, value: &impl Serialize) -> std::io::Result<()> {
    let temp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&temp, serde_json::to_vec_pretty(value)?)?;
    std::fs::rename(&temp, path)
}

/// Whether `pid` is a live process (a zombie is not).
pub fn alive(pid: u32) -> bool {
    let Ok(pid_t) = libc::pid_t::try_from(pid) else { return false };
    if pid_t <= 0 {
        return false;
    }
    // Safety: signal 0 only asks whether the process exists.
    let exists =
        unsafe { libc::kill(pid_t, 0) } == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    if !exists {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => true,
    }
}

/// Whether `pid` runs `engine run` (where /proc says); guards against a reused pid.
fn is_engine(pid: u32) -> bool {
    match std::fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(cmdline) => {
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            args.windows(2).any(|pair| pair[0] == b"engine" && pair[1] == b"run")
        }
        Err(_) => true,
    }
}

/// The pid file of a watcher that is running now.
pub fn running(data_dir: &Path) -> Option<PidFile> {
    read_json::<PidFile>(&data_dir.join(PID_FILE)).filter(|p| alive(p.pid) && is_engine(p.pid))
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
        // No orchestrator yet: every captured trace counts as new since the last training.
        // This becomes the orchestrator's own count once it exists.
        orchestrator: OrchestratorProgress { threshold: TRAINING_THRESHOLD, captured_since_last_training: captured },
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

#[derive(Debug)]
pub enum StopOutcome {
    NotRunning,
    /// Ended by SIGTERM.
    Stopped(u32),
    /// Needed SIGKILL.
    Killed(u32),
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
    std::fs::create_dir_all(data_dir)?;
    let data_dir = std::fs::canonicalize(data_dir)?;
    if let Some(pid_file) = running(&data_dir) {
        return Ok(StartOutcome::AlreadyRunning(pid_file));
    }
    let roots = roots.iter().map(std::path::absolute).collect::<Result<Vec<_>, _>>()?;
    let log_path = data_dir.join(LOG_FILE);
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path)?;

    let mut command = Command::new(binary);
    command.arg("--data-dir").arg(&data_dir).args(["engine", "run", "--interval", &options.interval.to_string()]);
    command.arg(format!("--max-tool-result-bytes={}", options.max_tool_result_bytes));
    for spec in &options.redact {
        command.arg(format!("--redact={spec}"));
    }
    if options.no_default_redactions {
        command.arg("--no-default-redactions");
    }
    for root in &roots {
        command.arg("--root").arg(root);
    }
    command.env_remove("CLAUDE_CONFIG_DIR").current_dir(&data_dir);
    command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
    #[cfg(unix)]
    {
        // Its own process group: a Ctrl-C in the terminal that started it does not reach it.
        use std::os::unix::process::CommandExt;
        command.process_group(0);
    }
    let mut child = command.spawn()?;
    let pid_file = PidFile { pid: child.id(), started_at: now_rfc3339(), roots, interval: options.interval };
    write_json(&data_dir.join(PID_FILE), &pid_file)?;
    // A child that fails at once (a bad pattern, an unwritable store) says so here.
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(100));
        if let Some(exit) = child.try_wait()? {
            let _ = std::fs::remove_file(data_dir.join(PID_FILE));
            return Err(WatcherError::ExitedAtOnce { exit, log: log_path });
        }
    }
    Ok(StartOutcome::Started { pid_file, log: log_path })
}

/// Stop the watcher of `data_dir`: SIGTERM, then SIGKILL after 5 s; removes the pid file.
pub fn stop(data_dir: &Path) -> StopOutcome {
    let pid_path = data_dir.join(PID_FILE);
    let Some(pid_file) = running(data_dir) else {
        let _ = std::fs::remove_file(&pid_path);
        return StopOutcome::NotRunning;
    };
    let pid = pid_file.pid as libc::pid_t;
    // Safety: plain signals to the pid our own pid file names, checked to be the engine.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(pid_file.pid) && Instant::now() < deadline {
        reap(pid);
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut outcome = StopOutcome::Stopped(pid_file.pid);
    if alive(pid_file.pid) {
        // Safe to force: every scan writes a file's traces and progress in one transaction.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let deadline = Instant::now() + Duration::from_secs(2);
        while alive(pid_file.pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        outcome = StopOutcome::Killed(pid_file.pid);
    }
    reap(pid);
    let _ = std::fs::remove_file(&pid_path);
    outcome
}

/// Collect the exit of `pid` if it is our own child (a server that started it), so no zombie
/// stays behind; a no-op for any other process.
fn reap(pid: libc::pid_t) {
    let mut status = 0;
    // Safety: WNOHANG never blocks; a pid that is not our child answers ECHILD.
    unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
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
