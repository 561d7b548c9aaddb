//! One orchestrator cycle as a durable state machine: dataset → SFT → RL (every k-th cycle) →
//! eval → promote → export → deploy. The cycle row in SQLite holds the stage it is in and what
//! the stages before made; each stage's work is an ordinary job, created together with its link
//! to the cycle, so a cycle resumed after kill -9 continues its stage's job from its checkpoint
//! and never starts a second one. A stage whose job fails ends the cycle as failed with the
//! reason; a failed deploy is recorded and the promotion kept.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::config::OrchestratorConfig;
use super::OrchestratorError;
use crate::config::Config;
use crate::eval::promotion::{self, Decision};
use crate::jobs::eval::{EvalParams, EvalTarget};
use crate::jobs::requests::{
    DatasetRequest, DeployRequest, ExportRequest, ExportTarget, ModelScope, RlRequest, TrainRequest,
};
use crate::jobs::train::Phase;
use crate::jobs::{run_job_until, JobOutput, JobParams, JobRecord, JobStatus, ProgressSink};
use crate::store::{CycleRow, Store};

/// Where a cycle is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CycleStage {
    Dataset,
    Sft,
    Rl,
    Eval,
    Promote,
    Export,
    Deploy,
    Done,
}

impl CycleStage {
    pub const ALL: [CycleStage; 8] = [
        CycleStage::Dataset,
        CycleStage::Sft,
        CycleStage::Rl,
        CycleStage::Eval,
        CycleStage::Promote,
        CycleStage::Export,
        CycleStage::Deploy,
        CycleStage::Done,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CycleStage::Dataset => "dataset",
            CycleStage::Sft => "sft",
            CycleStage::Rl => "rl",
            CycleStage::Eval => "eval",
            CycleStage::Promote => "promote",
            CycleStage::Export => "export",
            CycleStage::Deploy => "deploy",
            CycleStage::Done => "done",
        }
    }

    pub fn parse(text: &str) -> Option<CycleStage> {
        CycleStage::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

impl std::fmt::Display for CycleStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// How a cycle ended, or that it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CycleStatus {
    Running,
    Succeeded,
    Failed,
}

impl CycleStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CycleStatus::Running => "running",
            CycleStatus::Succeeded => "succeeded",
            CycleStatus::Failed => "failed",
        }
    }

    fn parse(text: &str) -> CycleStatus {
        match text {
            "running" => CycleStatus::Running,
            "succeeded" => CycleStatus::Succeeded,
            _ => CycleStatus::Failed,
        }
    }
}

/// The traces a cycle saw when it started.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TraceTally {
    pub total: i64,
    pub by_source: BTreeMap<String, i64>,
    /// Since the last successful cycle (all of them for the first).
    pub new: i64,
    pub new_by_source: BTreeMap<String, i64>,
}

/// A training run a cycle made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunNote {
    pub job_id: String,
    pub model_id: String,
    pub phase: String,
    pub steps: u64,
    pub final_loss: f64,
    pub final_reward: Option<f64>,
}

/// The candidate's eval numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EvalNote {
    pub job_id: String,
    pub eval_run_id: String,
    pub cases: usize,
    pub success: f64,
    pub first_tool: f64,
    pub arguments_valid: f64,
    pub valid_calls: f64,
    pub parsed: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExportNote {
    pub job_id: String,
    pub export_id: String,
    pub name: String,
    pub parity_passed: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeployNote {
    pub ok: bool,
    pub job_id: Option<String>,
    /// The Ollama model registered, or why the deploy failed.
    pub message: String,
}

/// What a cycle knows: its inputs and what each stage made. Stored as the cycle row's `state`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct CycleState {
    /// The configuration the cycle started with (later edits apply to the next cycle).
    pub config: Option<OrchestratorConfig>,
    pub traces: TraceTally,
    /// The champion the cycle warm-started from (the base model when none).
    pub start_model: Option<String>,
    pub dataset_id: Option<String>,
    pub sft: Option<RunNote>,
    pub rl: Option<RunNote>,
    /// Why an RL phase that was due did not run.
    pub rl_skipped: Option<String>,
    /// The model evaluated and proposed for promotion.
    pub candidate: Option<String>,
    pub eval: Option<EvalNote>,
    #[schema(value_type = Option<Object>)]
    pub decision: Option<Decision>,
    pub export: Option<ExportNote>,
    pub deploy: Option<DeployNote>,
}

/// A cycle as read from the store.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Cycle {
    pub id: String,
    pub number: i64,
    pub status: CycleStatus,
    pub stage: CycleStage,
    pub state: CycleState,
    pub error: Option<String>,
    pub started_at: String,
    pub finished_at: Option<String>,
    /// (stage, job id) of each job the cycle started.
    pub jobs: Vec<(String, String)>,
}

impl Cycle {
    pub fn from_row(row: CycleRow, jobs: Vec<(String, String)>) -> Result<Cycle, OrchestratorError> {
        let state = serde_json::from_value(row.state)
            .map_err(|e| OrchestratorError::Corrupt(format!("cycle {}: state: {e}", row.id)))?;
        Ok(Cycle {
            stage: CycleStage::parse(&row.stage).ok_or_else(|| {
                OrchestratorError::Corrupt(format!("cycle {}: unknown stage {:?}", row.id, row.stage))
            })?,
            status: CycleStatus::parse(&row.status),
            id: row.id,
            number: row.number,
            state,
            error: row.error,
            started_at: row.started_at,
            finished_at: row.finished_at,
            jobs,
        })
    }

    fn config(&self) -> OrchestratorConfig {
        self.state.config.clone().unwrap_or_default()
    }
}

/// Who watches a cycle: a progress sink per stage job, and each stage as it ends.
pub trait CycleObserver {
    fn begin(&mut self, stage: CycleStage) -> Option<Box<dyn ProgressSink>>;
    fn finished(&mut self, cycle: &Cycle);
}

/// Watches nothing (the server's background orchestrator logs through `tracing`).
pub struct Quiet;

impl CycleObserver for Quiet {
    fn begin(&mut self, stage: CycleStage) -> Option<Box<dyn ProgressSink>> {
        tracing::info!("orchestrator: stage {stage}");
        None
    }

    fn finished(&mut self, cycle: &Cycle) {
        tracing::info!("orchestrator: cycle {} is at {} ({})", cycle.number, cycle.stage, cycle.status.as_str());
    }
}

/// What a stage's job ended as, besides success.
enum StageEnd {
    /// The job failed or was cancelled: the cycle fails with this reason.
    Failed(String),
    /// This process is stopping: the cycle stays running and resumes later.
    Interrupted,
}

/// What a cycle needs besides its row: the store, the data dir, the default Ollama host and
/// the stop flag of the process running it.
pub struct CycleRunner<'a> {
    pub store: &'a Store,
    pub config: &'a Config,
    pub default_ollama_host: String,
    pub stop: Option<Arc<AtomicBool>>,
}

impl CycleRunner<'_> {
    /// Drive `cycle` from its stage to the end (or to a failure, or until stopped), saving the
    /// cycle after each stage.
    pub fn advance(&self, cycle: &mut Cycle, observer: &mut dyn CycleObserver) -> Result<(), OrchestratorError> {
        while cycle.status == CycleStatus::Running {
            let stage = cycle.stage;
            let outcome = match stage {
                CycleStage::Done => {
                    cycle.status = CycleStatus::Succeeded;
                    Ok(())
                }
                _ => self.run_stage(cycle, stage, observer),
            };
            match outcome {
                Ok(()) => {
                    if cycle.status == CycleStatus::Running {
                        cycle.stage = next_stage(stage);
                    }
                }
                Err(StageEnd::Failed(reason)) => {
                    cycle.status = CycleStatus::Failed;
                    cycle.error = Some(format!("{stage}: {reason}"));
                }
                Err(StageEnd::Interrupted) => {
                    self.save(cycle)?;
                    return Err(OrchestratorError::Interrupted);
                }
            }
            self.save(cycle)?;
            observer.finished(cycle);
        }
        Ok(())
    }

    fn save(&self, cycle: &mut Cycle) -> Result<(), OrchestratorError> {
        let db = self.store.connect()?;
        let state = serde_json::to_value(&cycle.state).expect("a cycle state serialises");
        db.update_cycle(&cycle.id, cycle.status.as_str(), cycle.stage.as_str(), &state, cycle.error.as_deref())?;
        cycle.jobs = db.cycle_jobs(&cycle.id)?;
        if cycle.status != CycleStatus::Running {
            cycle.finished_at = db.get_cycle(&cycle.id)?.and_then(|row| row.finished_at);
        }
        Ok(())
    }

    fn run_stage(
        &self,
        cycle: &mut Cycle,
        stage: CycleStage,
        observer: &mut dyn CycleObserver,
    ) -> Result<(), StageEnd> {
        let config = cycle.config();
        let store_error = |e: crate::store::StoreError| StageEnd::Failed(e.to_string());
        match stage {
            CycleStage::Dataset => {
                let start = cycle.state.start_model.clone();
                let model_path = match &start {
                    Some(id) => self.model_path(id)?,
                    None => config.base_model.clone(),
                };
                let request = DatasetRequest {
                    name: format!("orchestrator-cycle-{}", cycle.number),
                    model: model_path,
                    max_seq_len: config.max_seq_len,
                    seed: config.seed,
                    ..DatasetRequest::default()
                };
                let job = self.stage_job(cycle, stage, observer, || {
                    request.resolve(self.config, &ModelScope::Anywhere).map(Into::into).map_err(|e| e.to_string())
                })?;
                let JobOutput::BuildDataset(built) = output(&job)? else { return Err(wrong_output(&job)) };
                cycle.state.dataset_id = Some(built.id.clone());
            }
            CycleStage::Sft => {
                let model = match &cycle.state.start_model {
                    Some(id) => self.model_path(id)?,
                    None => config.base_model.clone(),
                };
                let request = TrainRequest {
                    phase: Phase::Sft,
                    dataset: cycle.state.dataset_id.clone(),
                    model,
                    max_steps: Some(config.max_steps),
                    max_minutes: config.max_minutes,
                    // The step budget decides, however few traces there are.
                    epochs: 1000,
                    batch_size: config.batch_size,
                    max_seq_len: config.max_seq_len,
                    eval_every: config.max_steps,
                    checkpoint_every: (config.max_steps / 4).max(1),
                    seed: config.seed,
                    ..TrainRequest::default()
                };
                let job = self.stage_job(cycle, stage, observer, || self.resolve_train(request))?;
                cycle.state.sft = Some(run_note(&job, "sft")?);
                cycle.state.candidate = cycle.state.sft.as_ref().map(|r| r.model_id.clone());
            }
            CycleStage::Rl => {
                if !config.runs_rl(cycle.number) {
                    return Ok(());
                }
                let phase = match config.rl_phase.as_str() {
                    "ppo" => Phase::Ppo,
                    "dpo" => Phase::Dpo,
                    _ => Phase::Grpo,
                };
                let sft_model = cycle.state.sft.as_ref().map(|r| r.model_id.clone()).unwrap_or_default();
                let request = TrainRequest {
                    phase,
                    dataset: cycle.state.dataset_id.clone(),
                    model: sft_model,
                    max_steps: Some(config.rl_steps),
                    max_seq_len: config.max_seq_len,
                    checkpoint_every: (config.rl_steps / 4).max(1),
                    seed: config.seed,
                    rl: RlRequest {
                        steps: config.rl_steps,
                        episodes: config.rl_steps * 4,
                        episodes_per_step: 4,
                        max_tokens: config.rl_max_tokens,
                        max_turns: 2,
                        ..RlRequest::default()
                    },
                    ..TrainRequest::default()
                };
                // An RL phase the data cannot feed (DPO without any preference pair) is skipped
                // with its reason; the SFT model stays the candidate.
                // A job already made (a resumed cycle) is taken over without resolving again.
                let mut resolved = None;
                if cycle_job_exists(self.store, cycle, stage).map_err(store_error)?.is_none() {
                    match self.resolve_train(request) {
                        Ok(params) => resolved = Some(params),
                        Err(reason) => {
                            cycle.state.rl_skipped = Some(reason);
                            return Ok(());
                        }
                    }
                }
                let job = self.stage_job(cycle, stage, observer, move || {
                    resolved.ok_or_else(|| "the RL job vanished while the cycle resumed".to_string())
                })?;
                cycle.state.rl = Some(run_note(&job, phase.as_str())?);
                cycle.state.candidate = cycle.state.rl.as_ref().map(|r| r.model_id.clone());
            }
            CycleStage::Eval => {
                let candidate = cycle.state.candidate.clone().ok_or_else(|| StageEnd::Failed("no candidate".into()))?;
                let params = EvalParams {
                    target: EvalTarget::Model {
                        model_id: Some(candidate.clone()),
                        path: self.model_path(&candidate)?.into(),
                        label: format!("orchestrator cycle {} ({candidate})", cycle.number),
                    },
                    suites: vec![config.eval_suite.clone()],
                    max_turns: 6,
                    max_tokens: config.eval_max_tokens,
                    limit: config.eval_limit,
                    tool_grammar: false,
                };
                let job = self.stage_job(cycle, stage, observer, || Ok(JobParams::Eval(params)))?;
                let JobOutput::Eval(outcome) = output(&job)? else { return Err(wrong_output(&job)) };
                let o = &outcome.overall;
                cycle.state.eval = Some(EvalNote {
                    job_id: job.id.to_string(),
                    eval_run_id: outcome.eval_run_id.clone(),
                    cases: o.cases,
                    success: o.success.rate,
                    first_tool: o.first_tool.rate,
                    arguments_valid: o.arguments_valid.rate,
                    valid_calls: o.valid_calls.rate,
                    parsed: o.parsed.rate,
                });
            }
            CycleStage::Promote => {
                let candidate = cycle.state.candidate.clone().ok_or_else(|| StageEnd::Failed("no candidate".into()))?;
                let mut db = self.store.connect().map_err(store_error)?;
                // A decision recorded before a crash is not made twice.
                let recorded =
                    db.list_promotions(200).map_err(store_error)?.into_iter().find(|p| p.model_id == candidate).map(
                        |p| Decision {
                            model_id: candidate.clone(),
                            promoted: p.promoted,
                            reason: p.reason,
                            champion: p.previous,
                        },
                    );
                let decision = match recorded {
                    Some(decision) => decision,
                    None => promotion::apply(&mut db, &candidate, &config.rule())
                        .map_err(|e| StageEnd::Failed(e.to_string()))?,
                };
                cycle.state.decision = Some(decision);
            }
            CycleStage::Export => {
                if !cycle.state.decision.as_ref().is_some_and(|d| d.promoted) {
                    return Ok(());
                }
                let candidate = cycle.state.candidate.clone().unwrap_or_default();
                let request = ExportRequest::new(
                    ExportTarget::Stored(candidate),
                    config.export_quants.clone(),
                    Some(config.model_name.clone()),
                );
                let job = self.stage_job(cycle, stage, observer, || {
                    let db = self.store.connect().map_err(|e| e.to_string())?;
                    request.resolve(&db, self.config).map(Into::into).map_err(|e| e.to_string())
                })?;
                let JobOutput::Export(outcome) = output(&job)? else { return Err(wrong_output(&job)) };
                cycle.state.export = Some(ExportNote {
                    job_id: job.id.to_string(),
                    export_id: outcome.export_id.clone(),
                    name: config.model_name.clone(),
                    parity_passed: outcome.parity.passed,
                });
            }
            CycleStage::Deploy => {
                let Some(export) = cycle.state.export.clone() else { return Ok(()) };
                if !config.auto_deploy {
                    return Ok(());
                }
                let request = DeployRequest {
                    export: Some(export.export_id.clone()),
                    name: Some(config.model_name.clone()),
                    host: config.ollama_host.clone(),
                    quant: None,
                    test: false,
                };
                // A failed deploy is recorded; the promotion and the export stand.
                let note = match self.stage_job(cycle, stage, observer, || {
                    let db = self.store.connect().map_err(|e| e.to_string())?;
                    request.resolve(&db, &self.default_ollama_host).map(Into::into).map_err(|e| e.to_string())
                }) {
                    Ok(job) => DeployNote {
                        ok: true,
                        job_id: Some(job.id.to_string()),
                        message: format!("registered {} with Ollama", config.model_name),
                    },
                    Err(StageEnd::Failed(reason)) => {
                        let job = cycle_job_exists(self.store, cycle, stage).map_err(store_error)?;
                        DeployNote { ok: false, job_id: job.map(|j| j.id.to_string()), message: reason }
                    }
                    Err(StageEnd::Interrupted) => return Err(StageEnd::Interrupted),
                };
                cycle.state.deploy = Some(note);
            }
            CycleStage::Done => {}
        }
        Ok(())
    }

    fn resolve_train(&self, request: TrainRequest) -> Result<JobParams, String> {
        let db = self.store.connect().map_err(|e| e.to_string())?;
        request.resolve(&db, self.config, &ModelScope::Anywhere).map(Into::into).map_err(|e| e.to_string())
    }

    /// A stored model's directory.
    fn model_path(&self, model_id: &str) -> Result<String, StageEnd> {
        let db = self.store.connect().map_err(|e| StageEnd::Failed(e.to_string()))?;
        match db.get_model(model_id).map_err(|e| StageEnd::Failed(e.to_string()))? {
            Some(model) => Ok(model.path),
            None => Err(StageEnd::Failed(format!("model {model_id} is no longer stored"))),
        }
    }

    /// Run the job of `stage`: the one the cycle already has (take it over when its process
    /// died, take its result when it finished), else a new one from `params`, created together
    /// with its link to the cycle.
    fn stage_job(
        &self,
        cycle: &Cycle,
        stage: CycleStage,
        observer: &mut dyn CycleObserver,
        params: impl FnOnce() -> Result<JobParams, String>,
    ) -> Result<JobRecord, StageEnd> {
        let store_error = |e: crate::store::StoreError| StageEnd::Failed(e.to_string());
        let mut db = self.store.connect().map_err(store_error)?;
        let pid = std::process::id();
        let job = match db.cycle_job(&cycle.id, stage.as_str()).map_err(store_error)? {
            Some(job) if job.status == JobStatus::Succeeded => return Ok(job),
            Some(job) if matches!(job.status, JobStatus::Failed | JobStatus::Cancelled) => {
                return Err(StageEnd::Failed(unfinished_reason(&job)));
            }
            Some(job) => {
                db.mark_orphaned_jobs_interrupted(crate::jobs::other_process_is_alive).map_err(store_error)?;
                if !db.take_over_job(job.id.as_str(), pid).map_err(store_error)? {
                    return Err(StageEnd::Failed(format!(
                        "job {} of this stage is running in another process (pid {:?})",
                        job.id, job.owner_pid
                    )));
                }
                tracing::info!("orchestrator: cycle {} resumes {} job {}", cycle.number, stage, job.id);
                db.get_job(job.id.as_str())
                    .map_err(store_error)?
                    .ok_or_else(|| StageEnd::Failed(format!("job {} vanished", job.id)))?
            }
            None => {
                let params = params().map_err(StageEnd::Failed)?;
                wait_for_accelerator(self.store, &params, self.stop.as_deref())?;
                db.insert_cycle_job(&cycle.id, stage.as_str(), &params, Some(pid)).map_err(store_error)?
            }
        };
        let sink = observer.begin(stage);
        let done = run_job_until(self.store, job, sink.as_deref(), self.stop.clone()).map_err(store_error)?;
        match done.status {
            JobStatus::Succeeded => Ok(done),
            JobStatus::Interrupted => Err(StageEnd::Interrupted),
            _ => Err(StageEnd::Failed(unfinished_reason(&done))),
        }
    }
}

/// The job a cycle's stage already has.
fn cycle_job_exists(
    store: &Store,
    cycle: &Cycle,
    stage: CycleStage,
) -> Result<Option<JobRecord>, crate::store::StoreError> {
    store.connect()?.cycle_job(&cycle.id, stage.as_str())
}

/// Training and evaluation share the machine's cores (or its one GPU): a stage that needs them
/// waits while another such job runs.
fn wait_for_accelerator(store: &Store, params: &JobParams, stop: Option<&AtomicBool>) -> Result<(), StageEnd> {
    if !matches!(params, JobParams::Train(_) | JobParams::Eval(_)) {
        return Ok(());
    }
    loop {
        let busy = store
            .connect()
            .and_then(|db| db.running_jobs_of(&["train", "eval"], None))
            .map_err(|e| StageEnd::Failed(e.to_string()))?;
        if busy.is_empty() {
            return Ok(());
        }
        if stop.is_some_and(|s| s.load(std::sync::atomic::Ordering::Relaxed)) {
            return Err(StageEnd::Interrupted);
        }
        tracing::info!("orchestrator: waiting for job {} to finish before training", busy[0]);
        std::thread::sleep(std::time::Duration::from_secs(2));
    }
}

fn next_stage(stage: CycleStage) -> CycleStage {
    let index = CycleStage::ALL.iter().position(|s| *s == stage).unwrap_or(CycleStage::ALL.len() - 1);
    CycleStage::ALL[(index + 1).min(CycleStage::ALL.len() - 1)]
}

fn unfinished_reason(job: &JobRecord) -> String {
    match job.output() {
        Ok(_) => format!("job {} succeeded", job.id),
        Err(reason) => format!("job {}: {reason}", job.id),
    }
}

fn output(job: &JobRecord) -> Result<&JobOutput, StageEnd> {
    job.output().map_err(|reason| StageEnd::Failed(format!("job {}: {reason}", job.id)))
}

fn wrong_output(job: &JobRecord) -> StageEnd {
    StageEnd::Failed(format!("job {} is a {} job, not the stage's kind", job.id, job.kind))
}

fn run_note(job: &JobRecord, phase: &str) -> Result<RunNote, StageEnd> {
    let JobOutput::Train(outcome) = output(job)? else { return Err(wrong_output(job)) };
    Ok(RunNote {
        job_id: job.id.to_string(),
        model_id: outcome.model_id.clone(),
        phase: phase.to_string(),
        steps: outcome.steps,
        final_loss: outcome.final_loss,
        final_reward: outcome.final_reward,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_run_in_order_and_end_at_done() {
        let mut stage = CycleStage::Dataset;
        let mut seen = vec![stage];
        while stage != CycleStage::Done {
            stage = next_stage(stage);
            seen.push(stage);
        }
        assert_eq!(seen, CycleStage::ALL);
        assert_eq!(next_stage(CycleStage::Done), CycleStage::Done);
        for stage in CycleStage::ALL {
            assert_eq!(CycleStage::parse(stage.as_str()), Some(stage));
        }
    }
}
