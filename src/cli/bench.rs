//! `understudy bench bootstrap [--traces N]`: time trace generation including the SQLite writes,
//! on a fresh temporary data dir, and print the figures as one JSON document.

use std::process::ExitCode;
use std::time::Instant;

use clap::Subcommand;

use super::print_json;
use crate::jobs::bootstrap::BootstrapParams;
use crate::store::Store;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Export time, file size and greedy agreement with f32 per quant.
    Export {
        /// A model id (mdl_...), `latest`, a model directory, an HF directory or a GGUF file.
        #[arg(long, default_value = "latest")]
        model: String,
        /// Held-out prompts (seeded synthetic traces).
        #[arg(long, default_value_t = 50)]
        prompts: u64,
        #[arg(long, default_value_t = 32)]
        max_tokens: usize,
    },
    /// LoRA (rank 8, q/k/v/o) steps on a pretrained base, e.g. SmolLM2-135M's GGUF.
    Lora {
        #[arg(long)]
        model: String,
        #[arg(long, default_value_t = 1)]
        batch_size: usize,
        #[arg(long, default_value_t = 256)]
        seq_len: usize,
        #[arg(long, default_value_t = 3)]
        steps: usize,
        /// auto, cpu or cuda[:N] (CUDA needs a `--features cuda` build).
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// SFT steps of the tiny preset: tokens/s and peak memory.
    Sft {
        #[arg(long, default_value_t = 4096)]
        vocab_size: usize,
        #[arg(long, default_value_t = 4)]
        batch_size: usize,
        #[arg(long, default_value_t = 512)]
        seq_len: usize,
        #[arg(long, default_value_t = 3)]
        steps: usize,
        /// auto, cpu or cuda[:N] (CUDA needs a `--features cuda` build).
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// Tokenize a dataset's training text with its tokenizer (one thread and batched).
    Tokenize {
        /// A dataset directory (artifacts/datasets/<id>).
        #[arg(long)]
        dataset_dir: std::path::PathBuf,
        /// Also write the rendered texts as a JSON list here, for another tokenizer to time.
        #[arg(long)]
        dump_corpus: Option<std::path::PathBuf>,
        #[arg(long, default_value_t = 3)]
        repeats: u32,
    },
    /// Generate and store N traces from the built-in templates.
    Bootstrap {
        #[arg(long, default_value_t = 5000)]
        traces: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Scan a generated Claude Code projects tree (N sessions of M turns), then rescan it.
    Capture {
        #[arg(long, default_value_t = 200)]
        sessions: u64,
        #[arg(long, default_value_t = 20)]
        turns: u64,
    },
}

pub fn run(config: &crate::config::Config, command: BenchCommand) -> anyhow::Result<ExitCode> {
    match command {
        BenchCommand::Export { model, prompts, max_tokens } => {
            let path = std::path::PathBuf::from(&model);
            let source = if path.join("template.json").exists() {
                crate::export::ExportSource::ModelDir(path)
            } else if path.exists() {
                crate::export::ExportSource::External(path)
            } else {
                crate::export::ExportSource::ModelDir(super::generate::model_dir(config, &model)?)
            };
            let templates = crate::bootstrap::workflows::builtin();
            let traces: Vec<crate::traces::Trace> = (0..prompts)
                .filter_map(|i| crate::bootstrap::generator::generate(&templates, 0xbe4c_e790, i).ok())
                .collect();
            let work = std::env::temp_dir().join(format!("understudy-bench-export-{}", ulid::Ulid::new()));
            let figures = crate::export::bench::export(&source, &traces, max_tokens, &work);
            let _ = std::fs::remove_dir_all(&work);
            print_json(&figures?)?;
        }
        BenchCommand::Lora { model, batch_size, seq_len, steps, device } => {
            let device = crate::model::llama::device_for(&device).map_err(anyhow::Error::msg)?;
            let source = crate::model::source::ModelSource::parse(&model)?;
            let (config, tensors) = crate::model::weights::load(&source, &device)?;
            print_json(&crate::train::bench::lora(config, tensors, batch_size, seq_len, steps, &device)?)?;
        }
        BenchCommand::Sft { vocab_size, batch_size, seq_len, steps, device } => {
            let device = crate::model::llama::device_for(&device).map_err(anyhow::Error::msg)?;
            print_json(&crate::train::bench::sft(vocab_size, batch_size, seq_len, steps, &device)?)?;
        }
        BenchCommand::Tokenize { dataset_dir, dump_corpus, repeats } => {
            let figures = crate::dataset::bench::tokenize(&dataset_dir, dump_corpus.as_deref(), repeats)?;
            print_json(&figures)?;
        }
        BenchCommand::Capture { sessions, turns } => {
            let work = std::env::temp_dir().join(format!("understudy-bench-capture-{}", ulid::Ulid::new()));
            print_json(&crate::capture::bench::capture(sessions, turns, &work)?)?;
        }
        BenchCommand::Bootstrap { traces, seed } => {
            let dir = std::env::temp_dir().join(format!("understudy-bench-{}", ulid::Ulid::new()));
            let store = Store::open(&dir)?;
            let started = Instant::now();
            let params = BootstrapParams { traces, seed, templates: Vec::new() };
            let outcome = crate::pipeline::bootstrap(&store, params, None);
            let seconds = started.elapsed().as_secs_f64();
            let _ = std::fs::remove_dir_all(&dir);
            let report = outcome?;
            print_json(&serde_json::json!({
                "benchmark": "bootstrap",
                "traces": traces,
                "stored": report.synthetic,
                "seconds": seconds,
                "traces_per_second": traces as f64 / seconds,
                "includes": "workspace generation, tool execution, validation, hashing and SQLite writes",
            }))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
