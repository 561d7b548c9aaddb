//! The orchestrator (spec 3.12): retrains as traces accumulate. `once` resumes the running cycle
//! or, when enough new traces arrived since the last successful cycle, starts the next one
//! (`cycle`); `run_loop` does that every interval until stopped. Exactly one orchestrator runs
//! per data dir — inside `serve` or as its own detached `orchestrator run` process — enforced by
//! an exclusive lock on `orchestrator.lock`; `orchestrator.pid` says who holds it. `status`
//! gathers what the CLI, the page and the API show.

pub mod config;
pub mod cycle;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use config::OrchestratorConfig;
pub use cycle::{Cycle, CycleObserver, CycleRunner, CycleStage, CycleState, CycleStatus, TraceTally};

use crate::daemon::{self, read_json, write_json};
use crate::jobs::requests::RequestError;
use crate::store::{Db, StoreError};
use crate::traces::now_rfc3339;

pub const LOCK_FILE: &str = "orchestrator.lock";
pub const PID_FILE: &str = "orchestrator.pid";
pub const LOG_FILE: &str = "orchestrator.log";

#[derive(Debug, thiserror::Error)]
pub enum OrchestratorError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error("the orchestrator already runs for this data dir{}", holder_text(.0))]
    AlreadyRunning(Option<Holder>),
    #[error("stopped; the cycle continues from its stage at the next start")]
    Interrupted,
    #[error("stored orchestrator state is unreadable: {0}")]
    Corrupt(String),
    #[error("the orchestrator process exited at once ({exit}); see {}", .log.display())]
    ExitedAtOnce { exit: std::process::ExitStatus, log: PathBuf },
    #[error("the orchestrator runs inside the server (pid {0}); stop the server, or turn run_in_serve off")]
    InsideServer(u32),
    #[error("{}: {source}", .path.display())]
    Io { path: PathBuf, source: std::io::Error },
}

fn holder_text(holder: &Option<Holder>) -> String {
    match holder {
        Some(h) => format!(" (pid {}, {}, since {})", h.pid, h.mode, h.started_at),
        None => String::new(),
    }
}

/// Who holds the orchestrator lock (`orchestrator.pid`).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Holder {
    pub pid: u32,
    /// `process` (`orchestrator start`), `serve` (inside the server) or `once`.
    pub mode: String,
    pub started_at: String,
}

/// The lock that makes this process the data dir's one orchestrator; released on drop.
#[derive(Debug)]
pub struct RunnerLock {
    _file: File,
    pid_path: PathBuf,
}

impl Drop for RunnerLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.pid_path);
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> OrchestratorError + '_ {
    move |source| OrchestratorError::Io { path: path.to_path_buf(), source }
}

/// Become the orchestrator of `data_dir` (`mode` as `status` shows it), or say who is.
pub fn lock(data_dir: &Path, mode: &str) -> Result<RunnerLock, OrchestratorError> {
    let path = data_dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(io(&path))?;
    // A `status` reading the lock holds it shared for a moment: try a few times.
    let mut attempts = 0;
    loop {
        match file.try_lock() {
            Ok(()) => break,
            Err(std::fs::TryLockError::WouldBlock) if attempts < 5 => {
                attempts += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(std::fs::TryLockError::WouldBlock) => return Err(OrchestratorError::AlreadyRunning(holder(data_dir))),
            Err(std::fs::TryLockError::Error(source)) => return Err(OrchestratorError::Io { path, source }),
        }
    }
    let pid_path = data_dir.join(PID_FILE);
    let me = Holder { pid: std::process::id(), mode: mode.to_string(), started_at: now_rfc3339() };
    write_json(&pid_path, &me).map_err(io(&pid_path))?;
    Ok(RunnerLock { _file: file, pid_path })
}

/// Who runs the orchestrator of `data_dir` now, if anyone.
pub fn holder(data_dir: &Path) -> Option<Holder> {
    let held = match File::open(data_dir.join(LOCK_FILE)) {
        Ok(file) => matches!(file.try_lock_shared(), Err(std::fs::TryLockError::WouldBlock)),
        Err(_) => false,
    };
    if !held {
        return None;
    }
    read_json::<Holder>(&data_dir.join(PID_FILE)).filter(|h| daemon::alive(h.pid))
}

/// How far the next cycle is.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Readiness {
    pub traces: i64,
    pub by_source: BTreeMap<String, i64>,
    /// New since the last successful cycle (all traces before the first).
    pub new_traces: i64,
    pub new_by_source: BTreeMap<String, i64>,
    /// `min_traces` before the first successful cycle, `traces_per_cycle` after.
    pub threshold: i64,
    /// Traces still missing before the next cycle starts (0: it can start).
    pub missing: i64,
}

fn last_success(db: &Db) -> Result<Option<Cycle>, StoreError> {
    let Some(row) = db.last_cycle_with_status(CycleStatus::Succeeded.as_str())? else { return Ok(None) };
    let id = row.id.clone();
    Cycle::from_row(row, Vec::new()).map(Some).map_err(|e| StoreError::Corrupt { id, reason: e.to_string() })
}

/// Count the traces now and what is new since the last successful cycle.
pub fn readiness(db: &Db, config: &OrchestratorConfig) -> Result<Readiness, StoreError> {
    let counts = db.trace_counts()?;
    let by_source: BTreeMap<String, i64> = counts.by_source.iter().map(|c| (c.name.clone(), c.count)).collect();
    let last = last_success(db)?.map(|c| c.state.traces);
    let (new_traces, new_by_source, threshold) = match &last {
        None => (counts.total, by_source.clone(), config.min_traces),
        Some(seen) => (
            (counts.total - seen.total).max(0),
            by_source
                .iter()
                .map(|(source, n)| (source.clone(), (n - seen.by_source.get(source).copied().unwrap_or(0)).max(0)))
                .filter(|(_, n)| *n > 0)
                .collect(),
            config.traces_per_cycle,
        ),
    };
    Ok(Readiness {
        traces: counts.total,
        by_source,
        new_traces,
        new_by_source,
        threshold,
        missing: (threshold - new_traces).max(0),
    })
}

/// What `once` did.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Attempt {
    /// A cycle ran to its end (succeeded or failed).
    Ran { cycle: Box<Cycle> },
    /// Not enough new traces.
    NotReady { readiness: Readiness },
}

/// Resume the running cycle, or start the next one when enough traces are new, and drive it
/// to its end. The caller holds the lock.
pub fn once(runner: &CycleRunner<'_>, observer: &mut dyn CycleObserver) -> Result<Attempt, OrchestratorError> {
    let mut db = runner.store.connect()?;
    let mut cycle = match db.running_cycle()? {
        Some(row) => {
            let jobs = db.cycle_jobs(&row.id)?;
            let cycle = Cycle::from_row(row, jobs)?;
            tracing::info!("orchestrator: resuming cycle {} at {}", cycle.number, cycle.stage);
            cycle
        }
        None => {
            let config = config::load(&db)?;
            let readiness = readiness(&db, &config)?;
            if readiness.missing > 0 {
                return Ok(Attempt::NotReady { readiness });
            }
            let state = CycleState {
                config: Some(config),
                traces: TraceTally {
                    total: readiness.traces,
                    by_source: readiness.by_source.clone(),
                    new: readiness.new_traces,
                    new_by_source: readiness.new_by_source.clone(),
                },
                start_model: db.list_models()?.into_iter().find(|m| m.is_champion).map(|m| m.id),
                ..CycleState::default()
            };
            let state = serde_json::to_value(&state).expect("a cycle state serialises");
            let row = db.insert_cycle(CycleStage::Dataset.as_str(), &state)?;
            Cycle::from_row(row, Vec::new())?
        }
    };
    drop(db);
    runner.advance(&mut cycle, observer)?;
    Ok(Attempt::Ran { cycle: Box::new(cycle) })
}

/// Run cycles as traces arrive until `stop` is set: `once`, then wait the configured interval
/// (a failed attempt is logged and tried again next interval). The caller holds the lock.
pub fn run_loop(runner: &CycleRunner<'_>, observer: &mut dyn CycleObserver, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match once(runner, observer) {
            Ok(Attempt::Ran { cycle }) => {
                tracing::info!("orchestrator: cycle {} {}", cycle.number, cycle.status.as_str());
                // A cycle just ended: check again at once for the traces that came meanwhile.
                continue;
            }
            Ok(Attempt::NotReady { readiness }) => {
                tracing::debug!("orchestrator: {} new traces, {} missing", readiness.new_traces, readiness.missing);
            }
            Err(OrchestratorError::Interrupted) => break,
            Err(error) => tracing::warn!("orchestrator: {error}"),
        }
        let interval =
            runner.store.connect().ok().and_then(|db| config::load(&db).ok()).map_or(60, |c| c.interval_seconds);
        for _ in 0..interval.max(1) * 4 {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// The stop flags of the orchestrator threads running in this process (inside `serve`), by
/// data dir, so a `stop` from the page or the API reaches them.
static RUNNING_HERE: std::sync::Mutex<BTreeMap<PathBuf, Arc<AtomicBool>>> = std::sync::Mutex::new(BTreeMap::new());

fn running_here() -> std::sync::MutexGuard<'static, BTreeMap<PathBuf, Arc<AtomicBool>>> {
    RUNNING_HERE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where a background orchestrator thread runs its cycles.
#[derive(Clone)]
pub struct Background {
    pub store: crate::store::Store,
    pub config: crate::config::Config,
    pub default_ollama_host: String,
}

impl Background {
    /// Take the lock (`mode` as `status` shows it) and run `work` with a runner on a new thread,
    /// which releases the lock when done. Refused at once when an orchestrator runs.
    fn spawn(
        self,
        mode: &str,
        stop: Arc<AtomicBool>,
        work: impl FnOnce(&CycleRunner<'_>, &AtomicBool) + Send + 'static,
    ) -> Result<std::thread::JoinHandle<()>, OrchestratorError> {
        let lock = lock(self.config.data_dir(), mode)?;
        let data_dir = self.config.data_dir().to_path_buf();
        running_here().insert(data_dir.clone(), Arc::clone(&stop));
        std::thread::Builder::new()
            .name("orchestrator".into())
            .spawn(move || {
                let key = self.config.data_dir().to_path_buf();
                let runner = CycleRunner {
                    store: &self.store,
                    config: &self.config,
                    default_ollama_host: self.default_ollama_host.clone(),
                    stop: Some(stop.clone()),
                };
                work(&runner, &stop);
                running_here().remove(&key);
                drop(lock);
            })
            .map_err(|source| OrchestratorError::Io { path: data_dir, source })
    }

    /// The orchestrator loop inside this process (`serve` with the orchestrator on) until `stop`.
    pub fn spawn_loop(self, stop: Arc<AtomicBool>) -> Result<std::thread::JoinHandle<()>, OrchestratorError> {
        self.spawn("serve", stop, |runner, stop| run_loop(runner, &mut cycle::Quiet, stop))
    }

    /// One cycle (`once`) on a thread of this process (the page's and the API's "Run a cycle now").
    pub fn spawn_once(self, stop: Arc<AtomicBool>) -> Result<std::thread::JoinHandle<()>, OrchestratorError> {
        self.spawn("serve", stop, |runner, _| match once(runner, &mut cycle::Quiet) {
            Ok(Attempt::Ran { cycle }) => {
                tracing::info!("orchestrator: cycle {} {}", cycle.number, cycle.status.as_str())
            }
            Ok(Attempt::NotReady { readiness }) => {
                tracing::info!("orchestrator: no cycle, {} traces missing", readiness.missing)
            }
            Err(error) => tracing::warn!("orchestrator: {error}"),
        })
    }
}

/// The champion and its numbers on the configured suite.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ChampionView {
    pub model_id: String,
    pub name: String,
    pub eval_run_id: Option<String>,
    pub cases: Option<usize>,
    pub success: Option<f64>,
    pub first_tool: Option<f64>,
    pub arguments_valid: Option<f64>,
    pub valid_calls: Option<f64>,
}

/// The job a running cycle is in.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CurrentJob {
    pub id: String,
    pub kind: String,
    pub status: String,
    pub message: String,
    pub percent: Option<u32>,
}

/// `orchestrator status`, the page and `GET /api/orchestrator`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct OrchestratorStatus {
    pub running: Option<Holder>,
    pub config: OrchestratorConfig,
    pub readiness: Readiness,
    pub cycles_succeeded: usize,
    pub cycles_failed: usize,
    pub current: Option<Cycle>,
    pub current_job: Option<CurrentJob>,
    pub champion: Option<ChampionView>,
    /// Newest first.
    pub history: Vec<Cycle>,
}

/// How many cycles `status` lists for the CLI, the page and the API.
pub const HISTORY: usize = 200;

/// Everything the orchestrator surfaces show, with the newest `history` cycles (the live panel
/// and the Dashboard ask for one).
pub fn status(db: &Db, data_dir: &Path, history: usize) -> Result<OrchestratorStatus, OrchestratorError> {
    let config = config::load(db)?;
    let readiness = readiness(db, &config)?;
    let history = db
        .list_cycles_with_jobs(history as i64)?
        .into_iter()
        .map(|(row, jobs)| Cycle::from_row(row, jobs))
        .collect::<Result<Vec<_>, _>>()?;
    let current = match db.running_cycle()? {
        Some(row) if history.first().is_some_and(|c| c.id == row.id) => history.first().cloned(),
        Some(row) => {
            let jobs = db.cycle_jobs(&row.id)?;
            Some(Cycle::from_row(row, jobs)?)
        }
        None => None,
    };
    let counts = db.cycle_status_counts()?;
    let count = |status: CycleStatus| counts.get(status.as_str()).copied().unwrap_or(0) as usize;
    let current_job = match current.as_ref().and_then(|c| c.jobs.last()) {
        Some((_, id)) => db.get_job(id)?.map(|job| CurrentJob {
            id: job.id.to_string(),
            kind: job.kind.to_string(),
            status: job.status.as_str().to_string(),
            percent: job.percent(),
            message: job.message,
        }),
        None => None,
    };
    let champion = match db.list_models()?.into_iter().find(|m| m.is_champion) {
        Some(model) => {
            let run = db.latest_eval_of(&model.id, std::slice::from_ref(&config.eval_suite))?;
            let summary: Option<crate::eval::metrics::Summary> = run
                .as_ref()
                .and_then(|r| r.summary.as_ref())
                .and_then(|s| serde_json::from_value(s.get("overall")?.clone()).ok());
            Some(ChampionView {
                model_id: model.id,
                name: model.name,
                eval_run_id: run.map(|r| r.id),
                cases: summary.as_ref().map(|s| s.cases),
                success: summary.as_ref().map(|s| s.success.rate),
                first_tool: summary.as_ref().map(|s| s.first_tool.rate),
                arguments_valid: summary.as_ref().map(|s| s.arguments_valid.rate),
                valid_calls: summary.as_ref().map(|s| s.valid_calls.rate),
            })
        }
        None => None,
    };
    Ok(OrchestratorStatus {
        running: holder(data_dir),
        config,
        readiness,
        cycles_succeeded: count(CycleStatus::Succeeded),
        cycles_failed: count(CycleStatus::Failed),
        current,
        current_job,
        champion,
        history,
    })
}

/// What `start` did.
#[derive(Debug)]
pub enum StartOutcome {
    AlreadyRunning(Holder),
    Started { pid: u32, log: PathBuf },
}

/// Start `<binary> --data-dir <data_dir> orchestrator run` detached, unless an orchestrator
/// already runs for this data dir.
pub fn start(binary: &Path, data_dir: &Path) -> Result<StartOutcome, OrchestratorError> {
    let data_dir = daemon::absolute_data_dir(data_dir).map_err(io(data_dir))?;
    if let Some(holder) = holder(&data_dir) {
        return Ok(StartOutcome::AlreadyRunning(holder));
    }
    let log = data_dir.join(LOG_FILE);
    let mut child = daemon::spawn(binary, &data_dir, &["orchestrator".into(), "run".into()], &log).map_err(io(&log))?;
    if let Some(exit) = daemon::exited_at_once(&mut child).map_err(io(&log))? {
        return Err(OrchestratorError::ExitedAtOnce { exit, log });
    }
    Ok(StartOutcome::Started { pid: child.id(), log })
}

/// Stop the orchestrator of `data_dir`: one running in this process (inside `serve`) gets its
/// stop flag and ends within 20 s; a detached one gets SIGTERM (the running job stops at its
/// next check, resumable), SIGKILL after 20 s. One inside another server is refused.
pub fn stop(data_dir: &Path) -> Result<daemon::StopOutcome, OrchestratorError> {
    let Some(holder) = holder(data_dir) else { return Ok(daemon::StopOutcome::NotRunning) };
    if holder.pid == std::process::id() {
        let flag = running_here().get(data_dir).cloned();
        if let Some(flag) = flag {
            flag.store(true, Ordering::SeqCst);
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while running_here().contains_key(data_dir) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            return Ok(daemon::StopOutcome::Stopped(holder.pid));
        }
    }
    if holder.mode == "serve" || !daemon::runs_subcommand(holder.pid, ["orchestrator", "run"]) {
        return Err(OrchestratorError::InsideServer(holder.pid));
    }
    Ok(daemon::terminate(holder.pid, &data_dir.join(PID_FILE), Duration::from_secs(20)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_lock_per_data_dir_and_it_says_who_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        assert!(holder(dir.path()).is_none());
        let first = lock(dir.path(), "once").unwrap();
        let held = holder(dir.path()).expect("held");
        assert_eq!((held.pid, held.mode.as_str()), (std::process::id(), "once"));
        match lock(dir.path(), "process") {
            Err(OrchestratorError::AlreadyRunning(Some(h))) => assert_eq!(h.pid, std::process::id()),
            other => panic!("a second lock was not refused: {other:?}"),
        }
        drop(first);
        assert!(holder(dir.path()).is_none());
        lock(dir.path(), "process").expect("free again");
    }
}
