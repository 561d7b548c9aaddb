//! `understudy engine start|stop|status|install|uninstall` (spec 3.3): the capture watcher as a
//! detached child of this same binary (`engine run`, hidden), found again through
//! `<data_dir>/capture-engine.pid`. The child rescans every `--interval` seconds, or at once when
//! `<data_dir>/capture-engine.trigger` appears (the `SessionEnd` hook touches it), and records its
//! last scan in `<data_dir>/capture-engine.json`. Rescanning is cheap because `capture::scan` is
//! incremental, so a periodic scan stands in for file-system notifications.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use serde_json::json;

use super::capture::CaptureArgs;
use super::print_json;
use crate::capture::watcher::{
    self, read_json, running, watcher_status, write_json, PidFile, StartOptions, StartOutcome, StopOutcome,
    WatcherState, PID_FILE, STATE_FILE, TRIGGER_FILE,
};
use crate::capture::{self, hook};
use crate::config::Config;
use crate::store::Store;
use crate::traces::now_rfc3339;

#[derive(Debug, Subcommand)]
pub enum EngineCommand {
    /// Start the capture watcher in the background.
    Start(StartArgs),
    /// Stop the background watcher.
    Stop,
    /// Whether the watcher runs, what it tracks, what it captured.
    Status(StatusArgs),
    /// Add a SessionEnd hook to Claude Code's user settings that wakes the watcher.
    Install(HookArgs),
    /// Remove exactly the hook `install` added.
    Uninstall(HookArgs),
    /// The watcher loop itself (what `start` runs in the background).
    #[command(hide = true)]
    Run(RunArgs),
}

#[derive(Debug, Args)]
pub struct StartArgs {
    #[command(flatten)]
    pub capture: CaptureArgs,
    /// Seconds between rescans.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub interval: u64,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub capture: CaptureArgs,
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub interval: u64,
    /// A resolved root (repeatable); `start` passes them so the child reads no environment.
    #[arg(long = "root", value_name = "DIR")]
    pub roots: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[arg(long)]
    pub json: bool,
    /// Claude Code settings file checked for the hook.
    #[arg(long, value_name = "PATH")]
    pub settings: Option<PathBuf>,
    #[arg(long, env = "CLAUDE_CONFIG_DIR", hide = true, value_name = "DIRS")]
    pub claude_config_dir: Option<String>,
}

#[derive(Debug, Args)]
pub struct HookArgs {
    /// Claude Code settings file (default: $CLAUDE_CONFIG_DIR/settings.json, else ~/.claude/settings.json).
    #[arg(long, value_name = "PATH")]
    pub settings: Option<PathBuf>,
    #[arg(long, env = "CLAUDE_CONFIG_DIR", hide = true, value_name = "DIRS")]
    pub claude_config_dir: Option<String>,
    #[arg(long)]
    pub json: bool,
}

pub fn run(config: &Config, command: EngineCommand) -> anyhow::Result<ExitCode> {
    match command {
        EngineCommand::Start(args) => start(config, args),
        EngineCommand::Stop => stop(config),
        EngineCommand::Status(args) => status(config, args),
        EngineCommand::Install(args) => install(config, args),
        EngineCommand::Uninstall(args) => uninstall(args),
        EngineCommand::Run(args) => run_loop(config, args),
    }
}

/// The data dir as an absolute path (created), so the child and the hook do not depend on a cwd.
fn absolute_data_dir(config: &Config) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(config.data_dir())?;
    Ok(std::fs::canonicalize(config.data_dir())?)
}

fn start(config: &Config, args: StartArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.interval >= 1, "--interval must be at least 1 second");
    let data_dir = absolute_data_dir(config)?;
    if let Some(pid_file) = running(&data_dir) {
        println!("already running (pid {})", pid_file.pid);
        return Ok(ExitCode::SUCCESS);
    }
    let settings = args.capture.settings()?;
    let options = StartOptions {
        interval: args.interval,
        max_tool_result_bytes: args.capture.max_tool_result_bytes,
        redact: args.capture.redact.clone(),
        no_default_redactions: args.capture.no_default_redactions,
    };
    match watcher::start(&std::env::current_exe()?, &data_dir, &settings.roots, &options)? {
        StartOutcome::AlreadyRunning(pid_file) => println!("already running (pid {})", pid_file.pid),
        StartOutcome::Started { pid_file, log } => {
            let roots_text = pid_file.roots.iter().map(|r| r.display().to_string()).collect::<Vec<_>>().join(", ");
            println!(
                "capture engine started (pid {}): watching {roots_text} every {}s; log {}",
                pid_file.pid,
                pid_file.interval,
                log.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn stop(config: &Config) -> anyhow::Result<ExitCode> {
    match watcher::stop(config.data_dir()) {
        StopOutcome::NotRunning => println!("not running"),
        StopOutcome::Stopped(pid) => println!("capture engine stopped (pid {pid})"),
        StopOutcome::Killed(pid) => println!("capture engine killed (pid {pid})"),
    }
    Ok(ExitCode::SUCCESS)
}

static STOP_REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn request_stop(_signal: libc::c_int) {
    STOP_REQUESTED.store(true, Ordering::SeqCst);
}

fn run_loop(config: &Config, args: RunArgs) -> anyhow::Result<ExitCode> {
    // Safety: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGTERM, request_stop as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, request_stop as *const () as libc::sighandler_t);
    }
    let mut capture_args = args.capture;
    if let Some(first) = args.roots.first() {
        capture_args.dir = Some(first.clone());
    }
    let mut settings = capture_args.settings()?;
    if !args.roots.is_empty() {
        settings.roots = args.roots.clone();
    }
    let data_dir = config.data_dir().to_path_buf();
    let store = Store::open(&data_dir)?;
    let trigger = data_dir.join(TRIGGER_FILE);
    let interval = Duration::from_secs(args.interval.max(1));
    // Notifications wake the loop as soon as a transcript changes; the interval is the fallback.
    let watcher = watcher::watch(&settings.roots);
    let mut state = WatcherState { pid: std::process::id(), started_at: now_rfc3339(), ..WatcherState::default() };
    tracing::info!(pid = state.pid, "capture engine running");

    while !STOP_REQUESTED.load(Ordering::SeqCst) {
        // Removed before the scan, so a session that ends during it asks for another.
        let _ = std::fs::remove_file(&trigger);
        match capture::scan(&store, &settings) {
            Ok(report) => {
                let totals = &mut state.totals;
                totals.traces_new += report.traces_new;
                totals.traces_updated += report.traces_updated;
                totals.malformed_lines += report.malformed_lines;
                totals.redactions += report.redactions;
                if report.traces_new + report.traces_updated > 0 {
                    state.last_capture_at = Some(now_rfc3339());
                    tracing::info!(new = report.traces_new, updated = report.traces_updated, "captured");
                }
                state.last_error = None;
                state.last_report = Some(serde_json::to_value(&report)?);
            }
            Err(error) => {
                tracing::warn!("scan failed: {error}");
                state.last_error = Some(error.to_string());
            }
        }
        state.totals.scans += 1;
        state.last_scan_at = Some(now_rfc3339());
        if let Err(error) = write_json(&data_dir.join(STATE_FILE), &state) {
            tracing::warn!("cannot record the scan: {error:#}");
        }
        let deadline = Instant::now() + interval;
        let mut next_trigger_check = Instant::now();
        while !STOP_REQUESTED.load(Ordering::SeqCst) && Instant::now() < deadline {
            if watcher.as_ref().is_some_and(|(_, changed)| changed.swap(false, Ordering::SeqCst)) {
                // Let a burst of writes settle, then scan once.
                std::thread::sleep(Duration::from_millis(300));
                break;
            }
            if Instant::now() >= next_trigger_check {
                if trigger.exists() {
                    break;
                }
                next_trigger_check = Instant::now() + Duration::from_secs(1);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // Leave the pid file alone if a later engine already replaced it.
    let pid_path = data_dir.join(PID_FILE);
    if read_json::<PidFile>(&pid_path).is_some_and(|p| p.pid == std::process::id()) {
        let _ = std::fs::remove_file(pid_path);
    }
    tracing::info!("capture engine stopped");
    Ok(ExitCode::SUCCESS)
}

/// `--settings`, else the first `$CLAUDE_CONFIG_DIR` directory's, else `~/.claude/settings.json`.
pub(crate) fn settings_path(explicit: Option<PathBuf>, claude_config_dir: Option<&str>) -> anyhow::Result<PathBuf> {
    if let Some(path) = explicit {
        return Ok(path);
    }
    if let Some(dir) = claude_config_dir.and_then(|d| d.split(',').map(str::trim).find(|d| !d.is_empty())) {
        return Ok(Path::new(dir).join("settings.json"));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .ok_or_else(|| anyhow::anyhow!("HOME is not set: give --settings or set CLAUDE_CONFIG_DIR"))?;
    Ok(PathBuf::from(home).join(".claude/settings.json"))
}

fn status(config: &Config, args: StatusArgs) -> anyhow::Result<ExitCode> {
    let data_dir = config.data_dir();
    let store = Store::open(data_dir)?;
    let settings = settings_path(args.settings, args.claude_config_dir.as_deref()).ok();
    let status = watcher_status(data_dir, &store, settings.as_deref())?;
    let captured = status.traces_captured;
    if args.json {
        print_json(&status)?;
        return Ok(ExitCode::SUCCESS);
    }
    match (&status.pid, &status.started_at, &status.interval, &status.roots) {
        (Some(pid), Some(started_at), Some(interval), Some(roots)) => println!(
            "running (pid {pid}) since {started_at}, every {interval}s, watching {}",
            roots.iter().map(|r| r.display().to_string()).collect::<Vec<_>>().join(", ")
        ),
        _ => println!("not running"),
    }
    println!("{} files, {} sessions tracked; {captured} traces captured", status.files, status.sessions);
    println!(
        "last scan {}, last capture {}",
        status.last_scan_at.as_deref().unwrap_or("never"),
        status.last_capture_at.as_deref().unwrap_or("never")
    );
    if let Some(error) = &status.last_error {
        println!("last scan failed: {error}");
    }
    let next = &status.orchestrator;
    println!("orchestrator: {} new traces (all sources) of {} for the next cycle", next.new_traces, next.threshold);
    println!("SessionEnd hook: {}", if status.hook_installed { "installed" } else { "not installed" });
    Ok(ExitCode::SUCCESS)
}

fn install(config: &Config, args: HookArgs) -> anyhow::Result<ExitCode> {
    let path = settings_path(args.settings, args.claude_config_dir.as_deref())?;
    let change = hook::install_file(&path, &absolute_data_dir(config)?.join(TRIGGER_FILE))?;
    if args.json {
        let changed = change.action != "already_installed";
        print_json(
            &json!({"settings": path, "changed": changed, "installed": true, "action": change.action, "entry": change.entry, "backup": change.backup}),
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    match &change.entry {
        None => println!("already installed in {}", path.display()),
        Some(entry) => {
            println!("{} to {} under hooks.{}:", change.action, path.display(), hook::EVENT);
            println!("{}", serde_json::to_string_pretty(entry)?);
            if let Some(backup) = &change.backup {
                println!("backup: {}", backup.display());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn uninstall(args: HookArgs) -> anyhow::Result<ExitCode> {
    let path = settings_path(args.settings, args.claude_config_dir.as_deref())?;
    let change = hook::uninstall_file(&path)?;
    if args.json {
        print_json(&json!({"settings": path, "removed": change.removed, "backup": change.backup}))?;
    } else if change.removed == 0 {
        println!("not installed in {}", path.display());
    } else {
        println!("removed {} hook(s) from {}", change.removed, path.display());
        if let Some(backup) = &change.backup {
            println!("backup: {}", backup.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}
