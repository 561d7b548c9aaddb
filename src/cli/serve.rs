//! `understudy serve` and `understudy quickstart`.

use std::process::ExitCode;

use clap::Args;

use super::progress::TerminalProgress;
use crate::config::{Config, ServeSettings};
use crate::dataset::{datasets_dir, DatasetConfig};
use crate::export::{ExportSource, Quant};
use crate::jobs::bootstrap::{params_value, BootstrapParams, BootstrapReport};
use crate::jobs::build_dataset::{params_value as build_params_value, BuildParams};
use crate::jobs::export::{params_value as export_params_value, ExportParams};
use crate::jobs::train::{params_value as train_params_value, TrainParams};
use crate::jobs::{run_job, JobKind, JobStatus};
use crate::model::llama::LlamaConfig;
use crate::model::source::ModelSource;
use crate::store::Store;
use crate::train::sft::SftConfig;
use crate::web::Application;

/// Quickstart is reproducible: the same 500 traces on every machine.
const QUICKSTART_SEED: u64 = 42;
/// About 1.8 epochs of the 446 training examples at batch 2: enough for reliably well-formed
/// tool calls (150 steps sometimes were not), and the whole quickstart stays near 7 minutes on
/// 2 CPU cores (training about 5.5 of them at ~2,400 tokens/s).
const QUICKSTART_SFT_STEPS: u64 = 400;

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Bearer key for /api/ (required when listening off loopback).
    #[arg(long, env = "UNDERSTUDY_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Token for the web UI and /api/ (required when listening off loopback); /v1 then takes the API key.
    #[arg(long, env = "UNDERSTUDY_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Where the Models page's Deploy button finds Ollama.
    #[arg(long, env = "OLLAMA_HOST")]
    pub ollama_host: Option<String>,
    #[arg(long, env = "CLAUDE_CONFIG_DIR", hide = true, value_name = "DIRS")]
    pub claude_config_dir: Option<String>,
    /// Requests decoded at once (mistral.rs schedules them together); more share the cores.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub engine_workers: u16,
    /// Requests waiting for a worker before the endpoint answers 429.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=4096))]
    pub queue_capacity: u16,
}

pub fn serve(config: &Config, args: ServeArgs) -> anyhow::Result<ExitCode> {
    let mut settings = ServeSettings::new(&args.host, args.port, args.api_key)?.with_admin_token(args.admin_token)?;
    settings.ollama_host = args.ollama_host;
    settings.claude_settings = super::engine::settings_path(None, args.claude_config_dir.as_deref()).ok();
    settings.understudy_binary = std::env::current_exe().ok();
    settings.engine_workers = args.engine_workers.into();
    settings.queue_capacity = args.queue_capacity.into();
    let store = Store::open(config.data_dir())?;
    actix_web::rt::System::new().block_on(async move {
        let application = Application::build(config.clone(), store, settings).await?;
        let address = application.address();
        eprintln!("Understudy is serving on http://{address}/ (Ctrl-C stops it)");
        eprintln!("  playground  http://{address}/playground");
        eprintln!("  OpenAI API  http://{address}/v1  (e.g. curl http://{address}/v1/models)");
        application.run_until_stopped().await
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Held-out prompts the quickstart scores its last checkpoints on.
const SELECTION_PROMPTS: i64 = 6;
/// How many of the newest checkpoints (every 50 steps) compete.
const SELECTION_CHECKPOINTS: usize = 5;

/// Keep the newest of the run's last checkpoints whose greedy replies to validation prompts
/// hold the most well-formed tool calls (see `train::select`), and say which one was kept.
fn keep_best_checkpoint(store: &Store, run_dir: &std::path::Path) -> anyhow::Result<()> {
    let db = store.connect()?;
    let filter = crate::store::TraceFilter { split: Some(crate::traces::Split::Val), ..Default::default() };
    let mut prompts = Vec::new();
    for summary in db.list_traces(&filter, SELECTION_PROMPTS, 0)? {
        if let Some(trace) = db.get_trace(&summary.id)? {
            prompts.push((crate::export::parity::prompt_of(&trace), trace.tools.clone()));
        }
    }
    let scores = crate::train::select::score_checkpoints(run_dir, &prompts, SELECTION_CHECKPOINTS, 96)?;
    let summary: Vec<String> =
        scores.iter().map(|s| format!("step {} {}/{}", s.step, s.tool_calls, s.prompts)).collect();
    let Some(best) = crate::train::select::best(&scores) else { return Ok(()) };
    if Some(best) != scores.first() {
        crate::train::select::adopt(run_dir, &best.dir)?;
        eprintln!(
            "      kept step {} (validation prompts with a well-formed tool call: {})",
            best.step,
            summary.join(", ")
        );
    } else {
        eprintln!(
            "      kept the final step (validation prompts with a well-formed tool call: {})",
            summary.join(", ")
        );
    }
    Ok(())
}

/// Run one pipeline stage as a foreground job with a progress bar; its result, or why it failed.
fn run_stage(
    store: &Store,
    kind: JobKind,
    params: &serde_json::Value,
    label: &str,
) -> anyhow::Result<serde_json::Value> {
    let job = store.connect()?.insert_job(kind.as_str(), params, Some(std::process::id()))?;
    let bar = TerminalProgress::count(label);
    let job = run_job(store, job, Some(&bar))?;
    bar.finish();
    if job.status != JobStatus::Succeeded {
        anyhow::bail!("{label} failed: {}", job.error.unwrap_or_else(|| job.status.as_str().to_string()));
    }
    Ok(job.result.unwrap_or_default())
}

/// The embedded default run: every pipeline stage that exists, then serve.
/// The name quickstart exports under (and finds on a second run).
const QUICKSTART_EXPORT: &str = "understudy-quickstart";

pub fn quickstart(config: &Config, args: ServeArgs) -> anyhow::Result<ExitCode> {
    let store = Store::open(config.data_dir())?;
    let previous =
        store.connect()?.list_exports()?.into_iter().find(|e| e.name == QUICKSTART_EXPORT && e.parity_passed);
    if let Some(export) = previous {
        eprintln!(
            "a previous quickstart's export {} is in {}: serving it (remove the data dir to start over)",
            export.id,
            config.data_dir().display()
        );
        eprintln!("[5/5] serve");
        return serve(config, args);
    }
    eprintln!("[1/5] bootstrap: 500 executable synthetic traces (seed {QUICKSTART_SEED})");
    let params = BootstrapParams { traces: 500, seed: QUICKSTART_SEED, templates: Vec::new() };
    let result = run_stage(&store, JobKind::Bootstrap, &params_value(&params), "bootstrap")?;
    let report: BootstrapReport = serde_json::from_value(result)?;
    eprintln!(
        "      {} new traces, {} already there, {} in the store ({:.2}s)",
        report.synthetic, report.duplicates, report.total_traces, report.seconds
    );
    eprintln!(
        "[2/5] build-dataset: ChatML-Hermes rendering, a tokenizer trained for the tiny preset, assistant-only masks"
    );
    let dataset_config = DatasetConfig::new("quickstart".into(), ModelSource::Tiny);
    let params = BuildParams { config: dataset_config, datasets_dir: datasets_dir(&config.artifacts_dir()) };
    let result = run_stage(&store, JobKind::BuildDataset, &build_params_value(&params), "dataset")?;
    eprintln!(
        "      dataset {}: train {}, val {}, test {} examples ({} truncated, {} dropped)",
        result["id"].as_str().unwrap_or(""),
        result["counts"]["train"],
        result["counts"]["val"],
        result["counts"]["test"],
        result["truncated"],
        result["dropped"]
    );
    eprintln!(
        "[3/5] train --phase sft: the tiny preset, {QUICKSTART_SFT_STEPS} steps on CPU (about 6 minutes on 2 cores)"
    );
    let dataset_dir = std::path::PathBuf::from(result["dir"].as_str().unwrap_or_default());
    let tokenizer =
        tokenizers::Tokenizer::from_file(dataset_dir.join("tokenizer.json")).map_err(|e| anyhow::anyhow!("{e}"))?;
    let sft = SftConfig {
        max_steps: Some(QUICKSTART_SFT_STEPS),
        epochs: 2,
        batch_size: 2,
        max_seq_len: 1024,
        // Evaluate once, at the end: evaluation on the way costs minutes on CPU.
        eval_every: QUICKSTART_SFT_STEPS,
        checkpoint_every: 50,
        seed: QUICKSTART_SEED,
        ..SftConfig::default()
    };
    let params = TrainParams {
        phase: "sft".into(),
        dataset_id: result["id"].as_str().unwrap_or_default().to_string(),
        dataset_dir,
        base_model: "tiny".into(),
        model_config: LlamaConfig::tiny(tokenizer.get_vocab_size(true)),
        sft,
        runs_dir: config.artifacts_dir().join("runs"),
    };
    let run = run_stage(&store, JobKind::Train, &train_params_value(&params), "train")?;
    eprintln!(
        "      model {}: loss {:.3} -> {:.3}, {:.0} tokens/s",
        run["model_id"].as_str().unwrap_or(""),
        run["first_loss"].as_f64().unwrap_or(f64::NAN),
        run["final_loss"].as_f64().unwrap_or(f64::NAN),
        run["tokens_per_second"].as_f64().unwrap_or(0.0)
    );
    let run_dir = std::path::PathBuf::from(run["checkpoint_dir"].as_str().unwrap_or_default());
    keep_best_checkpoint(&store, &run_dir)?;
    eprintln!("[4/5] export: HF directory, q8_0 and q4_k_m GGUF, Ollama Modelfile, parity checks");
    let params = ExportParams {
        source: ExportSource::ModelDir(run_dir.join("model")),
        quants: vec![Quant::Q8_0, Quant::Q4KM],
        name: QUICKSTART_EXPORT.into(),
        model_id: run["model_id"].as_str().map(str::to_string),
        dataset_id: Some(params.dataset_id.clone()),
        run_id: run["run_id"].as_str().map(str::to_string),
        exports_dir: config.artifacts_dir().join("exports"),
        parity_prompts: 4,
        parity_max_tokens: 64,
    };
    let export = run_stage(&store, JobKind::Export, &export_params_value(&params), "export")?;
    for check in export["parity"]["checks"].as_array().into_iter().flatten() {
        eprintln!(
            "      parity {:<22} {}",
            check["name"].as_str().unwrap_or(""),
            check["detail"].as_str().unwrap_or("")
        );
    }
    eprintln!("      Modelfile {}", export["modelfile"].as_str().unwrap_or("-"));
    eprintln!("[5/5] serve: the model answers as `{QUICKSTART_EXPORT}` (or `understudy`) on the OpenAI-compatible /v1 endpoint");
    serve(config, args)
}
