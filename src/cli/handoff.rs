//! `understudy handoff --dataset ID [--base B] [--phase sft|dpo|grpo] [--gpus N] [--nodes N]
//! [--engine trl|axolotl] --out DIR`: a ready-to-run TRL/Accelerate/DeepSpeed (or Axolotl)
//! directory for a stored dataset (`handoff::write`). The base is checked here: a directory or a
//! stored model's export must be LLaMA-family with the dataset's tokenizer.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use super::print_json;
use crate::config::Config;
use crate::eval::reward::RewardWeights;
use crate::handoff::{self, BaseModel, Engine, HandoffSpec, Hyperparameters, Phase, RewardSettings};
use crate::model::chat_template::ChatTemplate;
use crate::model::source::ModelSource;
use crate::store::{Db, Store};

#[derive(Debug, Args)]
pub struct HandoffArgs {
    /// The dataset to train on (ds_...).
    #[arg(long)]
    pub dataset: String,
    /// The model to start from: a Hugging Face directory, a stored model (mdl_..., through its
    /// export's hf/ directory) or a Hugging Face id. Default: the dataset's own model when it is
    /// a directory, else the newest export of a model trained on the dataset.
    #[arg(long)]
    pub base: Option<String>,
    #[arg(long, default_value = "sft")]
    pub phase: String,
    /// GPUs per machine.
    #[arg(long, default_value_t = 1)]
    pub gpus: u32,
    /// Machines.
    #[arg(long, default_value_t = 1)]
    pub nodes: u32,
    #[arg(long, default_value = "trl")]
    pub engine: String,
    /// Train LoRA adapters (r 16, alpha 32, every projection) instead of every weight.
    #[arg(long)]
    pub lora: bool,
    /// Learning rate (default: the phase's usual one for a pretrained base).
    #[arg(long)]
    pub lr: Option<f64>,
    #[arg(long)]
    pub epochs: Option<u32>,
    /// The Understudy server GRPO's reward calls reach.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub rewards_url: String,
    /// Reward weights for GRPO, as `train --reward-weights` takes them.
    #[arg(long)]
    pub reward_weights: Option<String>,
    /// The directory to write (must not exist, or be empty).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long)]
    pub json: bool,
}

/// Where Hugging Face keeps downloaded models on this machine.
fn hf_hub_cache() -> Option<PathBuf> {
    if let Some(cache) = std::env::var_os("HF_HUB_CACHE") {
        return Some(PathBuf::from(cache));
    }
    if let Some(home) = std::env::var_os("HF_HOME") {
        return Some(PathBuf::from(home).join("hub"));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/huggingface/hub"))
}

/// The hf/ directory of a stored model's newest export.
fn export_dir_of(db: &Db, model_id: &str) -> anyhow::Result<Option<PathBuf>> {
    Ok(db
        .list_exports()?
        .into_iter()
        .filter(|e| e.model_id.as_deref() == Some(model_id))
        .map(|e| Path::new(&e.path).join("hf"))
        .find(|dir| dir.join("config.json").exists()))
}

fn resolve_base(db: &Db, given: Option<&str>, dataset_id: &str, dataset_dir: &Path) -> anyhow::Result<BaseModel> {
    let check_dir = |dir: &Path| handoff::check_base_dir(dir, dataset_dir).map_err(anyhow::Error::from);
    match given {
        Some(id) if id.starts_with("mdl_") => {
            db.get_model(id)?.ok_or_else(|| anyhow::anyhow!("--base {id}: no model with that id"))?;
            let dir = export_dir_of(db, id)?.ok_or_else(|| {
                anyhow::anyhow!(
                    "--base {id}: the model has no export, and a trainer needs its Hugging Face directory: run `understudy export --model {id} --quant f32` first"
                )
            })?;
            check_dir(&dir)
        }
        Some(path) if Path::new(path).is_dir() => check_dir(Path::new(path)),
        Some(id) => Ok(handoff::check_base_id(id, dataset_dir, hf_hub_cache().as_deref())?),
        None => {
            let config: crate::dataset::DatasetConfig =
                serde_json::from_str(&std::fs::read_to_string(dataset_dir.join("config.json"))?)
                    .with_context(|| format!("{}", dataset_dir.join("config.json").display()))?;
            if let ModelSource::HfDir(dir) = &config.model {
                return check_dir(dir);
            }
            for model in db.list_models()?.into_iter().filter(|m| m.dataset_id.as_deref() == Some(dataset_id)) {
                if let Some(dir) = export_dir_of(db, &model.id)? {
                    return check_dir(&dir);
                }
            }
            anyhow::bail!(
                "--base: the dataset was built for {}, which has no Hugging Face checkpoint here; pass --base with a \
                 Hugging Face directory or id whose tokenizer the dataset used, or a stored model trained on it (mdl_..., \
                 exported)",
                config.model.label()
            )
        }
    }
}

pub fn run(config: &Config, args: HandoffArgs) -> anyhow::Result<ExitCode> {
    let phase = Phase::parse(&args.phase)
        .ok_or_else(|| anyhow::anyhow!("--phase {}: expected sft, dpo or grpo", args.phase))?;
    let engine = Engine::parse(&args.engine)
        .ok_or_else(|| anyhow::anyhow!("--engine {}: expected trl or axolotl", args.engine))?;
    let store = Store::open(config.data_dir())?;
    let db = store.connect()?;
    let dataset = db.get_dataset(&args.dataset)?.ok_or_else(|| {
        anyhow::anyhow!("--dataset {}: no dataset with that id (see `understudy datasets list`)", args.dataset)
    })?;
    let dataset_dir = PathBuf::from(&dataset.path);
    let base = resolve_base(&db, args.base.as_deref(), &dataset.id, &dataset_dir)?;
    let max_length = dataset.config["max_seq_len"].as_u64().unwrap_or(2048) as usize;
    let mut hyperparameters = Hyperparameters::defaults(phase, max_length, args.lora);
    if let Some(lr) = args.lr {
        anyhow::ensure!(lr.is_finite() && lr > 0.0 && lr < 1.0, "--lr {lr}: expected a number between 0 and 1");
        hyperparameters.learning_rate = lr;
    }
    if let Some(epochs) = args.epochs {
        anyhow::ensure!((1..=100).contains(&epochs), "--epochs {epochs}: expected 1 to 100");
        hyperparameters.epochs = epochs;
    }
    let weights = match &args.reward_weights {
        Some(text) => RewardWeights::parse(text)?,
        None => RewardWeights::default(),
    };
    let template = dataset.stats["template"].as_str().unwrap_or("chatml_hermes");
    let rewards = RewardSettings {
        url: args.rewards_url.trim_end_matches('/').to_string(),
        weights,
        token_budget: hyperparameters.max_completion_length,
        template: if ChatTemplate::builtin(template).is_some() { template.into() } else { "chatml_hermes".into() },
    };
    let cases = if phase == Phase::Grpo {
        let traces = handoff::training_traces(&dataset_dir)?;
        let templates: Vec<_> = crate::bootstrap::active_templates(&db)?.into_iter().map(|(t, _)| t).collect();
        crate::eval::suite::from_traces(&traces, &templates)
    } else {
        Vec::new()
    };
    let spec = HandoffSpec {
        dataset_id: dataset.id.clone(),
        dataset_name: dataset.name.clone(),
        dataset_dir,
        base,
        phase,
        engine,
        gpus: args.gpus,
        nodes: args.nodes,
        hyperparameters,
        rewards,
        cases,
    };
    let report = handoff::write(&spec, &args.out)?;
    if args.json {
        print_json(&report)?;
    } else {
        println!("handoff {}  {}", report.id, report.dir);
        println!(
            "  {} on {} ({} examples, {} pairs, {} GRPO cases); base {} ({})",
            phase.name(),
            dataset.id,
            report.examples,
            report.pairs,
            report.cases,
            report.base.model,
            report.base.note
        );
        println!("  next: cd {} && pip install -r requirements.txt && {}", report.dir, report.command);
    }
    Ok(ExitCode::SUCCESS)
}
