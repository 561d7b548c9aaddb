//! `understudy train --phase sft|grpo|ppo|dpo ...`: a training run as a foreground job with a progress
//! bar (step, loss or reward, tokens/s, ETA), resumable with `--resume RUN`.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, ValueEnum};

use super::progress::TerminalProgress;
use super::{flag_error, print_json};
use crate::config::Config;
use crate::jobs::requests::{ModelScope, RlRequest, TrainRequest};
use crate::jobs::train::Phase as TrainPhase;
use crate::jobs::{begin, run_job, JobKind, JobOutput, JobParams, JobRecord};
use crate::store::Store;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Phase {
    Sft,
    Ppo,
    Grpo,
    Dpo,
}

impl From<Phase> for TrainPhase {
    fn from(phase: Phase) -> TrainPhase {
        match phase {
            Phase::Sft => TrainPhase::Sft,
            Phase::Ppo => TrainPhase::Ppo,
            Phase::Grpo => TrainPhase::Grpo,
            Phase::Dpo => TrainPhase::Dpo,
        }
    }
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    #[arg(long, value_enum, default_value = "sft")]
    pub phase: Phase,
    /// Dataset id (default: the newest dataset).
    #[arg(long)]
    pub dataset: Option<String>,
    /// SFT: `tiny` (from scratch, with the dataset's tokenizer) or a base model path.
    /// GRPO, PPO, DPO: the stored model the policy starts from (an id, `latest` or `champion`).
    #[arg(long)]
    pub model: Option<String>,
    /// Passes over the data (default 1; DPO 3).
    #[arg(long)]
    pub epochs: Option<u32>,
    /// SFT: stop after this many steps. GRPO: optimizer steps (default 20).
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// SFT: also stop after this many minutes of training (summed over resumes), whichever
    /// comes first.
    #[arg(long)]
    pub max_minutes: Option<f64>,
    /// Learning rate (default: 3e-3 for SFT of the tiny preset, 1e-4 for GRPO, 5e-5 for PPO and DPO).
    #[arg(long)]
    pub lr: Option<f64>,
    #[arg(long, default_value_t = 4)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    #[arg(long, default_value_t = 10)]
    pub warmup_steps: u64,
    #[arg(long, default_value_t = 25)]
    pub eval_every: u64,
    #[arg(long, default_value_t = 50)]
    pub checkpoint_every: u64,
    /// Cut training sequences to this many tokens.
    #[arg(long, default_value_t = 2048)]
    pub max_seq_len: usize,
    /// SFT: loss weight of the tokens of a tool call's name (the tool choice) against 1 for the
    /// other trained tokens
    #[arg(long, default_value_t = TrainRequest::default().tool_name_weight)]
    pub tool_name_weight: f64,
    /// Train LoRA adapters of this rank on a frozen pretrained base (needs --model PATH).
    #[arg(long)]
    pub lora_rank: Option<usize>,
    /// LoRA alpha (default: twice the rank).
    #[arg(long)]
    pub lora_alpha: Option<f64>,
    /// Dropout on the adapters' input during training.
    #[arg(long, default_value_t = 0.0)]
    pub lora_dropout: f64,
    /// Projections that get adapters (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "q_proj,k_proj,v_proj,o_proj")]
    pub lora_targets: Vec<String>,
    /// auto, cpu or cuda[:N].
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Continue an interrupted, cancelled or failed run from its last checkpoint.
    #[arg(long)]
    pub resume: Option<String>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub rl: RlArgs,
}

/// GRPO's, PPO's and DPO's flags (spec 3.6).
#[derive(Debug, Args)]
pub struct RlArgs {
    /// Suites whose cases are rolled out (repeatable; default `training`).
    #[arg(long = "suite")]
    pub suites: Vec<String>,
    /// Episodes per case (at least 2).
    #[arg(long, default_value_t = 8)]
    pub group_size: usize,
    /// Cases per step.
    #[arg(long, default_value_t = 4)]
    pub prompts_per_step: usize,
    /// Sampling temperature of the rollouts.
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
    /// Replies per rollout episode.
    #[arg(long, default_value_t = 2)]
    pub max_turns: usize,
    /// Tokens per reply.
    #[arg(long, default_value_t = 96)]
    pub max_tokens: usize,
    /// Clip range ε.
    #[arg(long, default_value_t = 0.2)]
    pub epsilon: f64,
    /// Upper clip range (DAPO's ε_high; default ε).
    #[arg(long)]
    pub epsilon_high: Option<f64>,
    /// Policy updates per batch of rollouts.
    #[arg(long, default_value_t = 1)]
    pub iterations: usize,
    /// GRPO: k3 KL weight to the starting model (default 0: no reference). DPO: β of the
    /// sigmoid loss (default 0.1).
    #[arg(long)]
    pub beta: Option<f64>,
    /// DPO: label smoothing (0 to 0.5).
    #[arg(long, default_value_t = 0.0)]
    pub label_smoothing: f64,
    /// Advantage scaling: group, batch or none.
    #[arg(long, default_value = "group")]
    pub scale_rewards: String,
    /// Reward weights, e.g. `outcome=1,format=0.5,correctness=1,alignment=0.5,length=0.1`.
    #[arg(long, default_value = "")]
    pub reward_weights: String,
    /// PPO: episodes over the whole run (one per case, default 160).
    #[arg(long)]
    pub episodes: Option<u64>,
    /// PPO: episodes per step.
    #[arg(long, default_value_t = 16)]
    pub episodes_per_step: usize,
    /// PPO: passes over each batch of rollouts.
    #[arg(long, default_value_t = 4)]
    pub ppo_epochs: usize,
    /// PPO: optimizer steps per pass.
    #[arg(long, default_value_t = 1)]
    pub mini_batches: usize,
    /// PPO: the per-token KL penalty to the starting model.
    #[arg(long, default_value_t = 0.05)]
    pub kl_coef: f64,
    /// PPO: adapt the KL coefficient towards this KL per episode (nats).
    #[arg(long)]
    pub kl_target: Option<f64>,
    /// PPO: the adaptive controller's horizon (episodes).
    #[arg(long, default_value_t = 10_000.0)]
    pub kl_horizon: f64,
    /// PPO: the value loss's weight.
    #[arg(long, default_value_t = 0.1)]
    pub vf_coef: f64,
    /// PPO: the value clip range.
    #[arg(long, default_value_t = 0.2)]
    pub value_clip: f64,
    /// PPO: discount γ.
    #[arg(long, default_value_t = 1.0)]
    pub gamma: f64,
    /// PPO: GAE λ.
    #[arg(long, default_value_t = 0.95)]
    pub lam: f64,
}

impl TrainArgs {
    /// The flags as the request every surface builds.
    fn request(&self) -> TrainRequest {
        let defaults = TrainRequest::default();
        let grpo = self.phase == Phase::Grpo;
        let rl = &self.rl;
        TrainRequest {
            phase: self.phase.into(),
            dataset: self.dataset.clone(),
            model: self.model.clone().unwrap_or_else(|| {
                if self.phase == Phase::Sft {
                    "tiny".into()
                } else {
                    "latest".into()
                }
            }),
            max_steps: if grpo { None } else { self.max_steps },
            max_minutes: self.max_minutes,
            // DPO passes over its pairs three times unless told otherwise.
            epochs: self.epochs.unwrap_or(if self.phase == Phase::Dpo { 3 } else { 1 }),
            lr: self.lr.unwrap_or(defaults.lr),
            batch_size: self.batch_size,
            grad_accum: self.grad_accum,
            warmup_steps: self.warmup_steps,
            eval_every: self.eval_every,
            checkpoint_every: self.checkpoint_every,
            max_seq_len: self.max_seq_len,
            tool_name_weight: self.tool_name_weight,
            lora_rank: self.lora_rank,
            lora_alpha: self.lora_alpha,
            lora_dropout: self.lora_dropout,
            lora_targets: self.lora_targets.clone(),
            device: self.device.clone(),
            seed: self.seed,
            rl: RlRequest {
                suites: if rl.suites.is_empty() { defaults.rl.suites.clone() } else { rl.suites.clone() },
                steps: self.max_steps.unwrap_or(defaults.rl.steps),
                lr: self.lr.unwrap_or(defaults.rl.lr),
                group_size: rl.group_size,
                prompts_per_step: rl.prompts_per_step,
                temperature: rl.temperature,
                max_turns: rl.max_turns,
                max_tokens: rl.max_tokens,
                epsilon: rl.epsilon,
                epsilon_high: rl.epsilon_high,
                iterations: rl.iterations,
                beta: if self.phase == Phase::Grpo { rl.beta.unwrap_or(defaults.rl.beta) } else { defaults.rl.beta },
                scale_rewards: rl.scale_rewards.clone(),
                reward_weights: rl.reward_weights.clone(),
                dpo_beta: rl.beta.unwrap_or(defaults.rl.dpo_beta),
                label_smoothing: rl.label_smoothing,
                dpo_lr: self.lr.unwrap_or(defaults.rl.dpo_lr),
                episodes: rl.episodes.unwrap_or(defaults.rl.episodes),
                episodes_per_step: rl.episodes_per_step,
                ppo_epochs: rl.ppo_epochs,
                mini_batches: rl.mini_batches,
                kl_coef: rl.kl_coef,
                kl_target: rl.kl_target,
                kl_horizon: rl.kl_horizon,
                vf_coef: rl.vf_coef,
                value_clip: rl.value_clip,
                gamma: rl.gamma,
                lam: rl.lam,
                ppo_lr: self.lr.unwrap_or(defaults.rl.ppo_lr),
            },
        }
    }
}

pub fn run(config: &Config, args: TrainArgs) -> anyhow::Result<ExitCode> {
    let store = Store::open(config.data_dir())?;
    let db = store.connect()?;
    let bar = TerminalProgress::count("train");
    let finished = match &args.resume {
        Some(run_id) => {
            // A run killed with the process that ran it is still `running`: mark it interrupted.
            db.mark_orphaned_jobs_interrupted(crate::jobs::other_process_is_alive)?;
            let job = db.get_job(run_id)?.with_context(|| format!("no run with id {run_id:?}"))?;
            if job.kind != JobKind::Train {
                anyhow::bail!("{run_id} is a {} job, not a training run", job.kind);
            }
            if !job.status.is_resumable() {
                anyhow::bail!(
                    "run {run_id} is {}; only interrupted, cancelled or failed runs resume",
                    job.status.as_str()
                );
            }
            if !db.take_over_job(run_id, std::process::id())? {
                anyhow::bail!("run {run_id} was taken by another process");
            }
            let job = db.get_job(run_id)?.context("run vanished")?;
            eprintln!("run {} (resume with `understudy train --resume {}` if it stops)", job.id, job.id);
            run_job(&store, job, Some(&bar))?
        }
        None => {
            let params = args.request().resolve(&db, config, &ModelScope::Anywhere).map_err(flag_error)?;
            let job = begin(&db, &JobParams::Train(params))?;
            eprintln!("run {} (resume with `understudy train --resume {}` if it stops)", job.id, job.id);
            run_job(&store, job, Some(&bar))?
        }
    };
    bar.finish();
    report_train(&finished, args.json)
}

/// Print a run's outcome; shared with `jobs resume`.
pub fn report_train(job: &JobRecord, json: bool) -> anyhow::Result<ExitCode> {
    let JobOutput::Train(run) = job.output()? else { anyhow::bail!("job {} is not a training run", job.id) };
    if json {
        print_json(run)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!("run {}  model {}", run.run_id, run.model_id);
    if let (Some(first), Some(last)) = (run.first_reward, run.final_reward) {
        println!(
            "  steps {}  mean reward {first:.3} -> {last:.3}  {:.0} rollout tokens/s",
            run.steps, run.tokens_per_second
        );
        println!("  checkpoints {}", run.checkpoint_dir.display());
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "  steps {}  loss {:.4} -> {:.4}  eval loss {}  {:.0} tokens/s",
        run.steps,
        run.first_loss,
        run.final_loss,
        run.final_eval_loss.map_or("-".to_string(), |v| format!("{v:.4}")),
        run.tokens_per_second
    );
    println!("  checkpoints {}", run.checkpoint_dir.display());
    Ok(ExitCode::SUCCESS)
}
