//! `understudy train --phase sft ...`: a training run as a foreground job with a progress bar
//! (step, loss, tokens/s, ETA), resumable with `--resume RUN`.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, ValueEnum};

use super::print_json;
use super::progress::TerminalProgress;
use crate::config::Config;
use crate::jobs::train::{params_value, TrainParams};
use crate::jobs::{run_job, JobKind, JobRecord};
use crate::model::llama::LlamaConfig;
use crate::model::source::ModelSource;
use crate::store::Store;
use crate::train::sft::SftConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Phase {
    Sft,
    Ppo,
    Grpo,
    Dpo,
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

pub fn run(config: &Config, args: TrainArgs) -> anyhow::Result<ExitCode> {
    let store = Store::open(config.data_dir())?;
    let db = store.connect()?;
    let job = match &args.resume {
        Some(run_id) => {
            // A run killed with the process that ran it is still `running`: mark it interrupted.
            db.mark_orphaned_jobs_interrupted(crate::jobs::other_process_is_alive)?;
            let job = db.get_job(run_id)?.with_context(|| format!("no run with id {run_id:?}"))?;
            if job.kind != JobKind::Train.as_str() {
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
            db.get_job(run_id)?.context("run vanished")?
        }
        None => {
            if args.phase != Phase::Sft {
                anyhow::bail!("--phase {:?} is not available in this build yet; run --phase sft", args.phase);
            }
            let dataset = match &args.dataset {
                Some(id) => db.get_dataset(id)?.with_context(|| format!("no dataset with id {id:?}"))?,
                None => db
                    .list_datasets()?
                    .into_iter()
                    .next()
                    .context("no dataset yet: run `understudy build-dataset` first")?,
            };
            let base = ModelSource::parse(&args.model)?;
            let dataset_dir = std::path::PathBuf::from(&dataset.path);
            let model_config = match &base {
                ModelSource::Tiny => {
                    let tokenizer = tokenizers::Tokenizer::from_file(dataset_dir.join("tokenizer.json"))
                        .map_err(|e| anyhow::anyhow!("the dataset's tokenizer: {e}"))?;
                    let mut model_config = LlamaConfig::tiny(tokenizer.get_vocab_size(true));
                    model_config.max_position_embeddings = model_config.max_position_embeddings.max(args.max_seq_len);
                    model_config
                }
                pretrained => crate::model::weights::load(pretrained, &candle_core::Device::Cpu)?.0,
            };
            if args.lora_rank.is_some() && base == ModelSource::Tiny {
                anyhow::bail!("--lora-rank: LoRA needs a pretrained base (--model DIR or FILE.gguf), not tiny");
            }
            let lora = args.lora_rank.map(|rank| crate::model::llama::LoraConfig {
                rank,
                alpha: args.lora_alpha.unwrap_or(2.0 * rank as f64),
                dropout: args.lora_dropout,
                targets: args.lora_targets.clone(),
            });
            let sft = SftConfig {
                epochs: args.epochs,
                max_steps: args.max_steps,
                lr: args.lr,
                batch_size: args.batch_size,
                grad_accum: args.grad_accum,
                warmup_steps: args.warmup_steps,
                eval_every: args.eval_every.max(1),
                checkpoint_every: args.checkpoint_every.max(1),
                max_seq_len: args.max_seq_len,
                seed: args.seed,
                device: args.device.clone(),
                lora,
                ..SftConfig::default()
            };
            sft.validate().map_err(|e| anyhow::anyhow!("--{}", e.replacen('_', "-", 1)))?;
            crate::model::llama::device_for(&sft.device).map_err(|e| anyhow::anyhow!("--device {e}"))?;
            let params = TrainParams {
                phase: "sft".into(),
                dataset_id: dataset.id.clone(),
                dataset_dir,
                base_model: match &base {
                    ModelSource::Tiny => "tiny".into(),
                    other => other.label(),
                },
                model_config,
                sft,
                runs_dir: config.artifacts_dir().join("runs"),
            };
            db.insert_job(JobKind::Train.as_str(), &params_value(&params), Some(std::process::id()))?
        }
    };
    eprintln!("run {} (resume with `understudy train --resume {}` if it stops)", job.id, job.id);
    let bar = TerminalProgress::count("train");
    let finished = run_job(&store, job, Some(&bar))?;
    bar.finish();
    report_train(&finished, args.json)
}

/// Print a run's outcome; shared with `jobs resume`.
pub fn report_train(job: &JobRecord, json: bool) -> anyhow::Result<ExitCode> {
    let result = super::finished_result(job, "run", "understudy train --resume")?;
    if json {
        print_json(&result)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!("run {}  model {}", result["run_id"].as_str().unwrap_or(""), result["model_id"].as_str().unwrap_or(""));
    println!(
        "  steps {}  loss {:.4} -> {:.4}  eval loss {}  {:.0} tokens/s",
        result["steps"],
        result["first_loss"].as_f64().unwrap_or(f64::NAN),
        result["final_loss"].as_f64().unwrap_or(f64::NAN),
        result["final_eval_loss"].as_f64().map_or("-".to_string(), |v| format!("{v:.4}")),
        result["tokens_per_second"].as_f64().unwrap_or(0.0)
    );
    println!("  checkpoints {}", result["checkpoint_dir"].as_str().unwrap_or(""));
    Ok(ExitCode::SUCCESS)
}
