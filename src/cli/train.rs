//! `understudy train --phase sft ...`: a training run as a foreground job with a progress bar
//! (step, loss, tokens/s, ETA), resumable with `--resume RUN`.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, ValueEnum};

use super::progress::TerminalProgress;
use super::{flag_error, print_json};
use crate::config::Config;
use crate::jobs::requests::{ModelScope, TrainRequest};
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
    /// `tiny` (from scratch, with the dataset's tokenizer) or a base model path.
    #[arg(long, default_value = "tiny")]
    pub model: String,
    #[arg(long, default_value_t = 1)]
    pub epochs: u32,
    #[arg(long)]
    pub max_steps: Option<u64>,
    #[arg(long, default_value_t = 3e-3)]
    pub lr: f64,
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
}

impl TrainArgs {
    /// The flags as the request every surface builds.
    fn request(&self) -> TrainRequest {
        TrainRequest {
            phase: self.phase.into(),
            dataset: self.dataset.clone(),
            model: self.model.clone(),
            epochs: self.epochs,
            max_steps: self.max_steps,
            lr: self.lr,
            batch_size: self.batch_size,
            grad_accum: self.grad_accum,
            warmup_steps: self.warmup_steps,
            eval_every: self.eval_every,
            checkpoint_every: self.checkpoint_every,
            max_seq_len: self.max_seq_len,
            lora_rank: self.lora_rank,
            lora_alpha: self.lora_alpha,
            lora_dropout: self.lora_dropout,
            lora_targets: self.lora_targets.clone(),
            device: self.device.clone(),
            seed: self.seed,
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
