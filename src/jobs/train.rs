//! The `train` job: one training run, SFT, GRPO, PPO or DPO. The run reports its metrics per step
//! (SFT: loss, learning rate, gradient norm, tokens/s, eval loss; GRPO and PPO: reward and each
//! component, validity, first-tool and success rates, KL, entropy, clip fraction, rollout
//! tokens/s, and PPO's value loss and KL coefficient; DPO: loss, reward accuracy and margins), saves
//! its last checkpoint in the job checkpoint (so `resume` continues from it), honours cancel at
//! the next step, and registers the trained model with its lineage when it finishes.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{JobContext, JobError};
use crate::model::llama::LlamaConfig;
use crate::model::source::ModelSource;
use crate::store::{NewModel, PairInsertOutcome};
use crate::traces::preference::PreferencePair;
use crate::train::sft::{self, SftConfig, TrainError, TrainHooks};

/// The training phases of spec 3.6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Sft,
    Ppo,
    Grpo,
    Dpo,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Sft => "sft",
            Phase::Ppo => "ppo",
            Phase::Grpo => "grpo",
            Phase::Dpo => "dpo",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainParams {
    pub phase: Phase,
    pub dataset_id: String,
    pub dataset_dir: PathBuf,
    /// `tiny` or the path of the base model.
    pub base_model: String,
    pub model_config: LlamaConfig,
    pub sft: SftConfig,
    /// Where checkpoints and the final model go; resolved by the caller from its Config.
    pub runs_dir: PathBuf,
    /// A GRPO run's settings and starting model.
    #[serde(default)]
    pub grpo: Option<GrpoRun>,
    /// A DPO run's settings and starting model (the pairs are the dataset's).
    #[serde(default)]
    pub dpo: Option<DpoRun>,
    /// A PPO run's settings, starting model and suites.
    #[serde(default)]
    pub ppo: Option<PpoRun>,
}

/// What a DPO run starts from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DpoRun {
    pub config: crate::train::dpo::DpoConfig,
    pub start_model_id: String,
    pub start_dir: PathBuf,
}

/// What a rollout-based run (GRPO, PPO) starts from and rolls out.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RolloutRun<C> {
    pub config: C,
    pub start_model_id: String,
    pub start_dir: PathBuf,
    pub suites: Vec<String>,
}

pub type GrpoRun = RolloutRun<crate::train::grpo::GrpoConfig>;
pub type PpoRun = RolloutRun<crate::train::ppo::PpoConfig>;

/// What a finished run reports (`train --json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainOutcome {
    pub run_id: String,
    pub model_id: String,
    pub steps: u64,
    pub first_loss: f64,
    pub final_loss: f64,
    pub final_eval_loss: Option<f64>,
    pub tokens_per_second: f64,
    /// The run directory: checkpoints, and the trained model under `model/`.
    pub checkpoint_dir: PathBuf,
    /// RL runs: the mean episode reward of the first and the last step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_reward: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_reward: Option<f64>,
    /// DPO runs: held-out pairs whose chosen completion is the more likely one per token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heldout_accuracy_before: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heldout_accuracy_after: Option<f64>,
    /// SFT: the run stopped at its `max_minutes` budget before its last step.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stopped_at_time_budget: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Checkpoint {
    step: u64,
    dir: PathBuf,
}

struct JobHooks<'c, 'a> {
    context: &'c mut JobContext<'a>,
    started: std::time::Instant,
}

impl TrainHooks for JobHooks<'_, '_> {
    fn step(&mut self, step: u64, total: u64, metrics: &[(&str, f64)]) -> Result<(), TrainError> {
        let failed = |e: JobError| match e {
            JobError::Cancelled => TrainError::Cancelled,
            JobError::Interrupted => TrainError::Interrupted,
            other => TrainError::Other(other.to_string()),
        };
        for (name, value) in metrics {
            self.context.metric(step as i64, name, *value).map_err(failed)?;
        }
        let metric = |name: &str| metrics.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
        let elapsed = self.started.elapsed().as_secs_f64();
        let eta = if step > 0 { elapsed / step as f64 * (total - step.min(total)) as f64 } else { 0.0 };
        let message = match metric("reward") {
            Some(reward) => format!(
                "step {step}/{total} reward {reward:.3} valid {:.0}% first tool {:.0}% ETA {eta:.0}s",
                100.0 * metric("valid_rate").unwrap_or(0.0),
                100.0 * metric("first_tool_rate").unwrap_or(0.0)
            ),
            None => format!(
                "step {step}/{total} loss {:.4} {:.0} tok/s ETA {eta:.0}s",
                metric("loss").unwrap_or(f64::NAN),
                metric("tokens_per_second").unwrap_or(0.0)
            ),
        };
        self.context.progress(step, Some(total), &message, step == total).map_err(failed)?;
        self.context.check_cancelled().map_err(failed)
    }

    fn checkpoint(&mut self, step: u64, dir: &Path) -> Result<(), TrainError> {
        let value = serde_json::to_value(Checkpoint { step, dir: dir.to_path_buf() }).expect("checkpoint serialises");
        let job_id = self.context.job().id.clone();
        self.context.db().save_job_checkpoint(&job_id, &value).map_err(|e| TrainError::Other(e.to_string()))?;
        let _ = self.context.log("info", &format!("checkpoint at step {step}: {}", dir.display()));
        Ok(())
    }

    fn log(&mut self, message: &str) {
        let _ = self.context.log("info", message);
    }

    fn mined_pairs(&mut self, pairs: &[PreferencePair]) -> Result<(), TrainError> {
        if pairs.is_empty() {
            return Ok(());
        }
        // A resumed run rolls the same step out again: its pairs are already stored (same content).
        let outcomes = self.context.db().insert_mined_pairs(pairs).map_err(|e| TrainError::Other(e.to_string()))?;
        let new = outcomes.iter().filter(|o| matches!(o, PairInsertOutcome::Inserted { .. })).count();
        let _ = self.context.log("info", &format!("{} preference pairs mined from rollouts ({new} new)", pairs.len()));
        Ok(())
    }
}

fn train_failed(error: TrainError) -> JobError {
    match error {
        TrainError::Cancelled => JobError::Cancelled,
        TrainError::Interrupted => JobError::Interrupted,
        other => JobError::Failed(other.to_string()),
    }
}

/// The checkpoint a resumed run continues from.
fn resume_dir(context: &JobContext<'_>) -> Option<PathBuf> {
    let resume: Option<Checkpoint> = context.job().checkpoint.clone().and_then(|v| serde_json::from_value(v).ok());
    resume.map(|c| c.dir).filter(|d| d.join("state.json").exists())
}

pub fn run(context: &mut JobContext<'_>, params: &TrainParams) -> Result<TrainOutcome, JobError> {
    match (params.phase, &params.grpo, &params.ppo) {
        (Phase::Sft, _, _) => run_sft(context, params),
        (Phase::Grpo, Some(grpo), _) => run_grpo(context, params, grpo),
        (Phase::Ppo, _, Some(ppo)) => run_ppo(context, params, ppo),
        (Phase::Dpo, _, _) if params.dpo.is_some() => run_dpo(context, params),
        (phase, _, _) => Err(JobError::Failed(format!("the {} run's settings are missing", phase.as_str()))),
    }
}

/// The cases of a rollout run's suites.
fn rollout_cases(
    context: &mut JobContext<'_>,
    suites: &[String],
) -> Result<Vec<crate::eval::suite::EvalCase>, JobError> {
    Ok(super::eval::load_cases(context.db(), suites, None)
        .map_err(JobError::Failed)?
        .into_iter()
        .map(|(_, case)| case)
        .collect())
}

fn run_ppo(context: &mut JobContext<'_>, params: &TrainParams, ppo: &PpoRun) -> Result<TrainOutcome, JobError> {
    let run_id = context.job().id.to_string();
    let run_dir = params.runs_dir.join(&run_id);
    let resume_dir = resume_dir(context);
    let cases = rollout_cases(context, &ppo.suites)?;
    let config = &ppo.config;
    let kl = match config.kl_target {
        Some(target) => format!("adaptive KL from {} to {target} nats per episode", config.kl_coef),
        None => format!("KL coefficient {}", config.kl_coef),
    };
    context.log(
        "info",
        &format!(
            "PPO from model {} on {} cases ({}): {} episodes in {} steps of {}, {} epochs x {} mini-batches, {} turns x {} tokens, T {}, lr {}, {kl}, GAE γ {} λ {}, rewards {}, seed {}",
            ppo.start_model_id,
            cases.len(),
            ppo.suites.join(", "),
            config.episodes,
            config.steps(),
            config.episodes_per_step,
            config.ppo_epochs,
            config.mini_batches,
            config.max_turns,
            config.max_tokens,
            config.temperature,
            config.lr,
            config.gamma,
            config.lam,
            config.weights,
            config.seed
        ),
    )?;
    let start = crate::train::grpo::Start::load(&ppo.start_dir, &config.device).map_err(train_failed)?;
    let started = std::time::Instant::now();
    let summary = {
        let mut hooks = JobHooks { context: &mut *context, started };
        crate::train::ppo::train(start, &cases, config, &run_dir, resume_dir.as_deref(), &mut hooks)
    }
    .map_err(train_failed)?;
    finish_rollout_run(context, params, &ppo.start_model_id, Phase::Ppo, summary, json!({"episodes": config.episodes}))
}

fn run_grpo(context: &mut JobContext<'_>, params: &TrainParams, grpo: &GrpoRun) -> Result<TrainOutcome, JobError> {
    let run_id = context.job().id.to_string();
    let run_dir = params.runs_dir.join(&run_id);
    let resume_dir = resume_dir(context);
    let cases = rollout_cases(context, &grpo.suites)?;
    let config = &grpo.config;
    context.log(
        "info",
        &format!(
            "GRPO from model {} on {} cases ({}): {} steps of {} cases x {} episodes, {} turns x {} tokens, T {}, lr {}, β {}, rewards {}, seed {}",
            grpo.start_model_id,
            cases.len(),
            grpo.suites.join(", "),
            config.steps,
            config.prompts_per_step,
            config.group_size,
            config.max_turns,
            config.max_tokens,
            config.temperature,
            config.lr,
            config.beta,
            config.weights,
            config.seed
        ),
    )?;
    let start = crate::train::grpo::Start::load(&grpo.start_dir, &config.device).map_err(train_failed)?;
    let started = std::time::Instant::now();
    let summary = {
        let mut hooks = JobHooks { context: &mut *context, started };
        crate::train::grpo::train(start, &cases, config, &run_dir, resume_dir.as_deref(), &mut hooks)
    }
    .map_err(train_failed)?;
    finish_rollout_run(context, params, &grpo.start_model_id, Phase::Grpo, summary, json!({}))
}

/// Register the model a rollout run (GRPO, PPO) trained, with its figures (and `extra` ones), and
/// report the run.
fn finish_rollout_run(
    context: &mut JobContext<'_>,
    params: &TrainParams,
    start_model_id: &str,
    phase: Phase,
    summary: crate::train::grpo::RolloutSummary,
    extra: serde_json::Value,
) -> Result<TrainOutcome, JobError> {
    let mut metrics = json!({
        "phase": phase.as_str(),
        "first_reward": summary.first_reward,
        "final_reward": summary.final_reward,
        "rollout_tokens_per_second": summary.rollout_tokens_per_second,
        "steps": summary.steps,
    });
    if let (Some(metrics), serde_json::Value::Object(extra)) = (metrics.as_object_mut(), extra) {
        metrics.extend(extra);
    }
    let model_path = summary.model_dir.display().to_string();
    let model_id = register_child(context, params, start_model_id, phase.as_str(), &model_path, &metrics)?;
    let run_id = context.job().id.to_string();
    Ok(TrainOutcome {
        checkpoint_dir: params.runs_dir.join(&run_id),
        run_id,
        model_id,
        steps: summary.steps,
        first_loss: summary.first_loss,
        final_loss: summary.final_loss,
        final_eval_loss: None,
        tokens_per_second: summary.rollout_tokens_per_second,
        first_reward: Some(summary.first_reward),
        final_reward: Some(summary.final_reward),
        heldout_accuracy_before: None,
        heldout_accuracy_after: None,
        stopped_at_time_budget: false,
    })
}

/// Register a model an RL phase trained, once per run (a resumed run finds its row).
fn register_child(
    context: &mut JobContext<'_>,
    params: &TrainParams,
    parent_id: &str,
    phase: &str,
    model_path: &str,
    metrics: &serde_json::Value,
) -> Result<String, JobError> {
    let run_id = context.job().id.to_string();
    if let Some(existing) = context.db().model_of_run(&run_id)? {
        return Ok(existing.id);
    }
    let parent = context.db().get_model(parent_id)?;
    let name = format!(
        "{}-{phase}-{}",
        parent.as_ref().map_or("model", |p| p.name.as_str()),
        &run_id[run_id.len().saturating_sub(6)..]
    );
    let id = context.db().insert_model(&NewModel {
        name: &name,
        base_model: &params.base_model,
        parent_id: Some(parent_id),
        dataset_id: (!params.dataset_id.is_empty()).then_some(params.dataset_id.as_str()),
        run_id: Some(&run_id),
        path: model_path,
        metrics,
    })?;
    context.log("info", &format!("model {id} saved at {model_path}"))?;
    Ok(id)
}

/// The pairs of a dataset file, tokenized with the policy's template; a line that cannot be
/// used fails the run naming the file and line.
fn read_pairs(path: &Path, start: &crate::train::grpo::Start) -> Result<Vec<crate::train::dpo::PairTokens>, JobError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(JobError::Failed(format!("{}: {e}", path.display()))),
    };
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(number, line)| {
            crate::train::dpo::tokenize_pair(&start.tokenizer, &start.template, line)
                .map_err(|e| JobError::Failed(format!("{}:{}: {e}", path.display(), number + 1)))
        })
        .collect()
}

fn run_dpo(context: &mut JobContext<'_>, params: &TrainParams) -> Result<TrainOutcome, JobError> {
    let dpo = params.dpo.as_ref().expect("checked by run");
    let run_id = context.job().id.to_string();
    let run_dir = params.runs_dir.join(&run_id);
    let resume_dir = resume_dir(context);
    let start = crate::train::grpo::Start::load(&dpo.start_dir, &dpo.config.device).map_err(train_failed)?;
    let train_pairs = read_pairs(&params.dataset_dir.join("dpo.jsonl"), &start)?;
    let heldout_pairs = read_pairs(&params.dataset_dir.join("dpo_val.jsonl"), &start)?;
    let config = &dpo.config;
    context.log(
        "info",
        &format!(
            "DPO from model {} on dataset {}: {} training pairs, {} held out; β {}, lr {}, batch {}, seed {}",
            dpo.start_model_id,
            params.dataset_id,
            train_pairs.len(),
            heldout_pairs.len(),
            config.beta,
            config.lr,
            config.batch_size,
            config.seed
        ),
    )?;
    let started = std::time::Instant::now();
    let summary = {
        let mut hooks = JobHooks { context: &mut *context, started };
        crate::train::dpo::train(
            start,
            &train_pairs,
            &heldout_pairs,
            config,
            &run_dir,
            resume_dir.as_deref(),
            &mut hooks,
        )
    }
    .map_err(train_failed)?;
    let finite = |v: f64| v.is_finite().then_some(v);
    let metrics = json!({
        "phase": "dpo",
        "first_loss": summary.first_loss,
        "final_loss": summary.final_loss,
        "heldout_accuracy_before": finite(summary.heldout_accuracy_before),
        "heldout_accuracy_after": finite(summary.heldout_accuracy_after),
        "steps": summary.steps,
    });
    let model_path = summary.model_dir.display().to_string();
    let model_id = register_child(context, params, &dpo.start_model_id, "dpo", &model_path, &metrics)?;
    Ok(TrainOutcome {
        run_id,
        model_id,
        steps: summary.steps,
        first_loss: summary.first_loss,
        final_loss: summary.final_loss,
        final_eval_loss: None,
        tokens_per_second: 0.0,
        checkpoint_dir: run_dir,
        first_reward: None,
        final_reward: None,
        heldout_accuracy_before: finite(summary.heldout_accuracy_before),
        heldout_accuracy_after: finite(summary.heldout_accuracy_after),
        stopped_at_time_budget: false,
    })
}

fn run_sft(context: &mut JobContext<'_>, params: &TrainParams) -> Result<TrainOutcome, JobError> {
    let run_id = context.job().id.to_string();
    let run_dir = params.runs_dir.join(&run_id);
    let resume_dir = resume_dir(context);
    context.log(
        "info",
        &format!(
            "SFT on dataset {} from {}: {} layers, d{}, vocab {}; lr {}, batch {}x{}, seed {}",
            params.dataset_id,
            params.base_model,
            params.model_config.num_hidden_layers,
            params.model_config.hidden_size,
            params.model_config.vocab_size,
            params.sft.lr,
            params.sft.batch_size,
            params.sft.grad_accum,
            params.sft.seed
        ),
    )?;
    let init = if params.base_model == "tiny" {
        sft::Init::Scratch
    } else {
        let source = ModelSource::parse(&params.base_model).map_err(|e| JobError::Failed(e.to_string()))?;
        let device = crate::model::llama::device_for(&params.sft.device).map_err(JobError::Failed)?;
        let (_, tensors) = crate::model::weights::load(&source, &device)
            .map_err(|e| JobError::Failed(format!("loading {}: {e}", params.base_model)))?;
        sft::Init::Pretrained(tensors)
    };
    let started = std::time::Instant::now();
    let summary = {
        let mut hooks = JobHooks { context: &mut *context, started };
        sft::train(
            &params.dataset_dir,
            &params.model_config,
            &params.sft,
            init,
            &run_dir,
            resume_dir.as_deref(),
            &mut hooks,
        )
    };
    let summary = summary.map_err(train_failed)?;
    let metrics = json!({
        "first_loss": summary.first_loss,
        "final_loss": summary.final_loss,
        "final_eval_loss": summary.final_eval_loss,
        "tokens_per_second": summary.tokens_per_second,
        "steps": summary.steps,
    });
    let model_path = summary.model_dir.display().to_string();
    let name = format!(
        "{}-sft-{}",
        params.base_model.rsplit('/').next().unwrap_or("model"),
        &run_id[run_id.len().saturating_sub(6)..]
    );
    let model_id = match context.db().model_of_run(&run_id)? {
        Some(existing) => existing.id,
        None => context.db().insert_model(&NewModel {
            name: &name,
            base_model: &params.base_model,
            parent_id: None,
            dataset_id: Some(&params.dataset_id),
            run_id: Some(&run_id),
            path: &model_path,
            metrics: &metrics,
        })?,
    };
    context.log("info", &format!("model {model_id} saved at {model_path}"))?;
    Ok(TrainOutcome {
        run_id,
        model_id,
        steps: summary.steps,
        first_loss: summary.first_loss,
        final_loss: summary.final_loss,
        final_eval_loss: summary.final_eval_loss,
        tokens_per_second: summary.tokens_per_second,
        checkpoint_dir: run_dir,
        first_reward: None,
        final_reward: None,
        heldout_accuracy_before: None,
        heldout_accuracy_after: None,
        stopped_at_time_budget: summary.stopped_at_time_budget,
    })
}
