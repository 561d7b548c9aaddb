//! Durable jobs: the queue lives in SQLite (through `store`), a runner executes queued jobs on its
//! own OS threads, and the CLI can run any job in the foreground. A job reports progress, metrics
//! and logs through `JobContext`, checks for cancellation, and saves a checkpoint so an
//! interrupted or cancelled job continues where it stopped when resumed.
//!
//! Job bodies (one module per kind) know nothing of HTTP or the terminal; they only see
//! `JobContext`.

pub mod bootstrap;
pub mod build_dataset;
pub mod deploy;
pub mod export;
pub mod import_dpo;
pub mod import_traces;
mod runner;
pub mod train;

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::store::{Db, Store, StoreError};

pub use runner::JobRunner;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    Interrupted,
}

impl JobStatus {
    pub const ALL: [JobStatus; 6] = [
        JobStatus::Queued,
        JobStatus::Running,
        JobStatus::Succeeded,
        JobStatus::Failed,
        JobStatus::Cancelled,
        JobStatus::Interrupted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
            JobStatus::Interrupted => "interrupted",
        }
    }

    pub fn parse(text: &str) -> Option<JobStatus> {
        JobStatus::ALL.into_iter().find(|s| s.as_str() == text)
    }

    pub fn is_finished(self) -> bool {
        !matches!(self, JobStatus::Queued | JobStatus::Running)
    }

    /// Stopped before finishing: can be resumed from its checkpoint.
    pub fn is_resumable(self) -> bool {
        matches!(self, JobStatus::Interrupted | JobStatus::Cancelled | JobStatus::Failed)
    }
}

/// The kinds of job there are. Each has a body module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    ImportTraces,
    ImportDpo,
    Bootstrap,
    BuildDataset,
    Train,
    Export,
    Deploy,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::ImportTraces => "import_traces",
            JobKind::ImportDpo => "import_dpo",
            JobKind::Bootstrap => "bootstrap",
            JobKind::BuildDataset => "build_dataset",
            JobKind::Train => "train",
            JobKind::Export => "export",
            JobKind::Deploy => "deploy",
        }
    }

    pub fn parse(text: &str) -> Option<JobKind> {
        match text {
            "import_traces" => Some(JobKind::ImportTraces),
            "import_dpo" => Some(JobKind::ImportDpo),
            "bootstrap" => Some(JobKind::Bootstrap),
            "build_dataset" => Some(JobKind::BuildDataset),
            "train" => Some(JobKind::Train),
            "export" => Some(JobKind::Export),
            "deploy" => Some(JobKind::Deploy),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct JobRecord {
    pub id: String,
    pub kind: String,
    pub status: JobStatus,
    #[schema(value_type = Object)]
    pub params: Value,
    #[schema(value_type = Option<Object>)]
    pub checkpoint: Option<Value>,
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
    pub error: Option<String>,
    pub progress_done: i64,
    pub progress_total: Option<i64>,
    pub message: String,
    pub cancel_requested: bool,
    #[serde(skip)]
    pub owner_pid: Option<u32>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
}

impl JobRecord {
    /// Progress in percent when the total is known.
    pub fn percent(&self) -> Option<u32> {
        match self.progress_total {
            Some(total) if total > 0 => {
                Some(((self.progress_done.max(0) as f64 / total as f64) * 100.0).min(100.0) as u32)
            }
            _ if self.status == JobStatus::Succeeded => Some(100),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct JobMetric {
    pub step: i64,
    pub name: String,
    pub value: f64,
}

#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct JobLog {
    pub level: String,
    pub message: String,
    pub logged_at: String,
}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("cancelled")]
    Cancelled,
    /// The process is shutting down; the job stops at a checkpoint and can be resumed.
    #[error("interrupted by shutdown")]
    Interrupted,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Failed(String),
}

/// Where a foreground job also reports its progress (the CLI's progress bar).
pub trait ProgressSink {
    fn progress(&self, done: u64, total: Option<u64>, message: &str);
}

const PROGRESS_WRITE_INTERVAL: Duration = Duration::from_millis(250);

/// A running job's window on the world.
pub struct JobContext<'a> {
    job: JobRecord,
    db: Db,
    sink: Option<&'a dyn ProgressSink>,
    last_progress_write: Option<Instant>,
    /// Set when the runner shuts down.
    stop: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

impl<'a> JobContext<'a> {
    pub fn job(&self) -> &JobRecord {
        &self.job
    }

    pub fn db(&mut self) -> &mut Db {
        &mut self.db
    }

    /// Report progress; stored at most every 250 ms (and always when `force`).
    pub fn progress(&mut self, done: u64, total: Option<u64>, message: &str, force: bool) -> Result<(), JobError> {
        if let Some(sink) = self.sink {
            sink.progress(done, total, message);
        }
        let due = self.last_progress_write.is_none_or(|t| t.elapsed() >= PROGRESS_WRITE_INTERVAL);
        if force || due {
            self.db.update_job_progress(&self.job.id, done as i64, total.map(|t| t as i64), message)?;
            self.last_progress_write = Some(Instant::now());
        }
        Ok(())
    }

    /// Err(Cancelled) once someone asked this job to stop; Err(Interrupted) when the process
    /// that runs it is shutting down.
    pub fn check_cancelled(&self) -> Result<(), JobError> {
        if self.stop.as_ref().is_some_and(|s| s.load(std::sync::atomic::Ordering::SeqCst)) {
            return Err(JobError::Interrupted);
        }
        if self.db.is_cancel_requested(&self.job.id)? {
            Err(JobError::Cancelled)
        } else {
            Ok(())
        }
    }

    pub fn log(&self, level: &str, message: &str) -> Result<(), JobError> {
        tracing::debug!(job = %self.job.id, level, "{message}");
        self.db.add_job_log(&self.job.id, level, message)?;
        Ok(())
    }

    pub fn metric(&self, step: i64, name: &str, value: f64) -> Result<(), JobError> {
        self.db.add_job_metric(&self.job.id, step, name, value)?;
        Ok(())
    }
}

/// Execute a job that is already marked running for this process, and record how it ended.
/// Returns the final record.
pub fn run_job(store: &Store, job: JobRecord, sink: Option<&dyn ProgressSink>) -> Result<JobRecord, StoreError> {
    run_job_until(store, job, sink, None)
}

/// `run_job`, stopping at the job's next check (as `interrupted`) once `stop` is set.
pub fn run_job_until(
    store: &Store,
    job: JobRecord,
    sink: Option<&dyn ProgressSink>,
    stop: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
) -> Result<JobRecord, StoreError> {
    let job_id = job.id.clone();
    let span = tracing::info_span!("job", id = %job_id, kind = %job.kind);
    let _entered = span.enter();
    let mut context = JobContext { job, db: store.connect()?, sink, last_progress_write: None, stop };
    let outcome = match JobKind::parse(&context.job.kind) {
        Some(JobKind::ImportTraces) => import_traces::run(&mut context),
        Some(JobKind::ImportDpo) => import_dpo::run(&mut context),
        Some(JobKind::Bootstrap) => bootstrap::run(&mut context),
        Some(JobKind::BuildDataset) => build_dataset::run(&mut context),
        Some(JobKind::Train) => train::run(&mut context),
        Some(JobKind::Export) => export::run(&mut context),
        Some(JobKind::Deploy) => deploy::run(&mut context),
        None => Err(JobError::Failed(format!("unknown job kind {:?}", context.job.kind))),
    };
    let db = store.connect()?;
    match outcome {
        Ok(result) => db.finish_job(&job_id, JobStatus::Succeeded, Some(&result), None)?,
        Err(JobError::Cancelled) => {
            let _ = db.add_job_log(&job_id, "warn", "cancelled; resume continues from the last checkpoint");
            db.finish_job(&job_id, JobStatus::Cancelled, None, None)?
        }
        Err(JobError::Interrupted) => {
            let _ =
                db.add_job_log(&job_id, "warn", "interrupted by shutdown; resume continues from the last checkpoint");
            db.finish_job(&job_id, JobStatus::Interrupted, None, None)?
        }
        Err(error) => {
            let message = error.to_string();
            tracing::warn!("job failed: {message}");
            let _ = db.add_job_log(&job_id, "error", &message);
            db.finish_job(&job_id, JobStatus::Failed, None, Some(&message))?
        }
    }
    db.get_job(&job_id)?.ok_or_else(|| StoreError::Corrupt { id: job_id, reason: "job vanished".into() })
}

/// Whether another process with this id is alive on this machine (tells crashed jobs from ones
/// that another Understudy process is running). A job owned by our own pid at start-up was left
/// by an earlier process that had the same pid, so it counts as dead.
pub fn other_process_is_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return false;
    }
    if cfg!(target_os = "linux") {
        std::path::Path::new(&format!("/proc/{pid}")).exists()
    } else {
        false
    }
}
