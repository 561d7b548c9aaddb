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
pub mod eval;
pub mod export;
pub mod import_dpo;
pub mod import_traces;
pub mod requests;
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

/// The kinds of job there are. Each has a body module and a `JobParams` variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    ImportTraces,
    ImportDpo,
    Bootstrap,
    BuildDataset,
    Train,
    Export,
    Deploy,
    Eval,
}

impl JobKind {
    pub const ALL: [JobKind; 8] = [
        JobKind::ImportTraces,
        JobKind::ImportDpo,
        JobKind::Bootstrap,
        JobKind::BuildDataset,
        JobKind::Train,
        JobKind::Export,
        JobKind::Deploy,
        JobKind::Eval,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::ImportTraces => "import_traces",
            JobKind::ImportDpo => "import_dpo",
            JobKind::Bootstrap => "bootstrap",
            JobKind::BuildDataset => "build_dataset",
            JobKind::Train => "train",
            JobKind::Export => "export",
            JobKind::Deploy => "deploy",
            JobKind::Eval => "eval",
        }
    }

    pub fn parse(text: &str) -> Option<JobKind> {
        JobKind::ALL.into_iter().find(|k| k.as_str() == text)
    }
}

impl std::fmt::Display for JobKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// A job's id (`job_<ULID>`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct JobId(pub String);

impl JobId {
    pub fn new() -> JobId {
        JobId(format!("job_{}", ulid::Ulid::new()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for JobId {
    fn default() -> Self {
        JobId::new()
    }
}

impl std::ops::Deref for JobId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(&self.0)
    }
}

impl PartialEq<str> for JobId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

/// What a job does: one variant per kind, each holding the config its body takes. Stored as
/// the `kind` and `params` columns; every front door (CLI, pages, API, pipeline) builds one of
/// these and hands it to `submit` or `run_foreground`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", content = "params", rename_all = "snake_case")]
pub enum JobParams {
    ImportTraces(import_traces::ImportParams),
    ImportDpo(import_dpo::ImportDpoParams),
    Bootstrap(bootstrap::BootstrapParams),
    BuildDataset(build_dataset::BuildParams),
    Train(train::TrainParams),
    Export(export::ExportParams),
    Deploy(deploy::DeployParams),
    Eval(eval::EvalParams),
}

/// What a job produced: one variant per kind, stored as the `result` column.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", content = "result", rename_all = "snake_case")]
pub enum JobOutput {
    ImportTraces(import_traces::ImportReport),
    ImportDpo(import_traces::ImportReport),
    Bootstrap(bootstrap::BootstrapReport),
    BuildDataset(build_dataset::DatasetBuilt),
    Train(train::TrainOutcome),
    Export(export::ExportOutcome),
    Deploy(crate::deploy::DeployReport),
    Eval(eval::EvalOutcome),
}

/// Split an adjacently tagged value into its inner JSON, and put one together again from the
/// `kind` column and the inner JSON.
fn inner_json(value: &impl serde::Serialize, content: &str) -> Value {
    let mut whole = serde_json::to_value(value).expect("job values serialise");
    whole.get_mut(content).map(Value::take).unwrap_or(Value::Null)
}

fn from_parts<T: serde::de::DeserializeOwned>(
    kind: JobKind,
    content: &str,
    inner: Value,
) -> Result<T, serde_json::Error> {
    let mut whole = serde_json::Map::new();
    whole.insert("kind".into(), Value::String(kind.as_str().into()));
    whole.insert(content.into(), inner);
    serde_json::from_value(Value::Object(whole))
}

impl JobParams {
    pub fn kind(&self) -> JobKind {
        match self {
            JobParams::ImportTraces(_) => JobKind::ImportTraces,
            JobParams::ImportDpo(_) => JobKind::ImportDpo,
            JobParams::Bootstrap(_) => JobKind::Bootstrap,
            JobParams::BuildDataset(_) => JobKind::BuildDataset,
            JobParams::Train(_) => JobKind::Train,
            JobParams::Export(_) => JobKind::Export,
            JobParams::Deploy(_) => JobKind::Deploy,
            JobParams::Eval(_) => JobKind::Eval,
        }
    }

    /// The `params` column: the variant's config alone.
    pub fn to_json(&self) -> Value {
        inner_json(self, "params")
    }

    pub fn from_json(kind: JobKind, params: Value) -> Result<JobParams, serde_json::Error> {
        from_parts(kind, "params", params)
    }

    fn serialize_inner<S: serde::Serializer>(params: &JobParams, serializer: S) -> Result<S::Ok, S::Error> {
        serde::Serialize::serialize(&params.to_json(), serializer)
    }
}

impl JobOutput {
    pub fn kind(&self) -> JobKind {
        match self {
            JobOutput::ImportTraces(_) => JobKind::ImportTraces,
            JobOutput::ImportDpo(_) => JobKind::ImportDpo,
            JobOutput::Bootstrap(_) => JobKind::Bootstrap,
            JobOutput::BuildDataset(_) => JobKind::BuildDataset,
            JobOutput::Train(_) => JobKind::Train,
            JobOutput::Export(_) => JobKind::Export,
            JobOutput::Deploy(_) => JobKind::Deploy,
            JobOutput::Eval(_) => JobKind::Eval,
        }
    }

    /// The `result` column: the variant's value alone (what `--json` prints).
    pub fn to_json(&self) -> Value {
        inner_json(self, "result")
    }

    pub fn from_json(kind: JobKind, result: Value) -> Result<JobOutput, serde_json::Error> {
        from_parts(kind, "result", result)
    }

    fn serialize_inner<S: serde::Serializer>(output: &Option<JobOutput>, serializer: S) -> Result<S::Ok, S::Error> {
        serde::Serialize::serialize(&output.as_ref().map(JobOutput::to_json), serializer)
    }
}

#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct JobRecord {
    #[schema(value_type = String)]
    pub id: JobId,
    pub kind: JobKind,
    pub status: JobStatus,
    #[serde(serialize_with = "JobParams::serialize_inner")]
    #[schema(value_type = Object)]
    pub params: JobParams,
    /// The body's own resume state; only the body reads it.
    #[schema(value_type = Option<Object>)]
    pub checkpoint: Option<Value>,
    #[serde(serialize_with = "JobOutput::serialize_inner")]
    #[schema(value_type = Option<Object>)]
    pub result: Option<JobOutput>,
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

/// Queue a job for the runner of a serving process; returns its id at once. The pages, the API,
/// the CLI's `--background` paths and the pipeline all start background work here.
pub fn submit(db: &Db, params: &JobParams) -> Result<JobId, StoreError> {
    Ok(db.insert_job(params, None)?.id)
}

/// Record a job that this process runs now (already `running`, owned by this pid); hand it to
/// `run_job`. For a caller that shows the id before the work starts.
pub fn begin(db: &Db, params: &JobParams) -> Result<JobRecord, StoreError> {
    db.insert_job(params, Some(std::process::id()))
}

/// Run a job in this process now (the CLI's foreground jobs, the pipeline's stages), reporting
/// to `sink`; returns the finished record.
pub fn run_foreground(
    store: &Store,
    params: &JobParams,
    sink: Option<&dyn ProgressSink>,
) -> Result<JobRecord, StoreError> {
    let job = begin(&store.connect()?, params)?;
    run_job(store, job, sink)
}

/// Why a finished job has no output: it did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum Unfinished {
    #[error("{kind} {id} was cancelled; `understudy jobs resume {id}` continues it")]
    Cancelled { kind: JobKind, id: JobId },
    #[error("{0}")]
    Failed(String),
}

impl JobRecord {
    /// The output of a job that succeeded, or why there is none.
    pub fn output(&self) -> Result<&JobOutput, Unfinished> {
        match self.status {
            JobStatus::Succeeded => self
                .result
                .as_ref()
                .ok_or_else(|| Unfinished::Failed(format!("{} {} stored no result", self.kind, self.id))),
            JobStatus::Cancelled => Err(Unfinished::Cancelled { kind: self.kind, id: self.id.clone() }),
            status => Err(Unfinished::Failed(
                self.error.clone().unwrap_or_else(|| format!("{} {} ended as {}", self.kind, self.id, status.as_str())),
            )),
        }
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
    let params = job.params.clone();
    let mut context = JobContext { job, db: store.connect()?, sink, last_progress_write: None, stop };
    let context = &mut context;
    let outcome = match &params {
        JobParams::ImportTraces(params) => import_traces::run(context, params).map(JobOutput::ImportTraces),
        JobParams::ImportDpo(params) => import_dpo::run(context, params).map(JobOutput::ImportDpo),
        JobParams::Bootstrap(params) => bootstrap::run(context, params).map(JobOutput::Bootstrap),
        JobParams::BuildDataset(params) => build_dataset::run(context, params).map(JobOutput::BuildDataset),
        JobParams::Train(params) => train::run(context, params).map(JobOutput::Train),
        JobParams::Export(params) => export::run(context, params).map(JobOutput::Export),
        JobParams::Deploy(params) => deploy::run(context, params).map(JobOutput::Deploy),
        JobParams::Eval(params) => eval::run(context, params).map(JobOutput::Eval),
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
    db.get_job(&job_id)?.ok_or_else(|| StoreError::Corrupt { id: job_id.to_string(), reason: "job vanished".into() })
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
