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
        /// Train on this dataset directory's examples (artifacts/datasets/<id>) as the trainer
        /// batches them, `--seq-len` cutting them, instead of random tokens.
        #[arg(long)]
        dataset_dir: Option<std::path::PathBuf>,
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
    /// Schema-constrained token choice on a model's real vocabulary: the time the grammar adds
    /// per token (best case: the sampler's first choice fits; worst: the whole vocabulary is
    /// masked), next to plain sampling, for forced calls of the six default tools.
    Constrain {
        /// A GGUF file, an HF directory or a model directory (its tokenizer is what counts).
        #[arg(long)]
        model: String,
        /// Forced calls to decode per case.
        #[arg(long, default_value_t = 12)]
        calls: u64,
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
        BenchCommand::Sft { vocab_size, batch_size, seq_len, steps, device, dataset_dir } => {
            let device = crate::model::llama::device_for(&device).map_err(anyhow::Error::msg)?;
            match dataset_dir {
                Some(dir) => {
                    print_json(&crate::train::bench::sft_on_dataset(&dir, batch_size, seq_len, steps, &device)?)?
                }
                None => print_json(&crate::train::bench::sft(vocab_size, batch_size, seq_len, steps, &device)?)?,
            }
        }
        BenchCommand::Tokenize { dataset_dir, dump_corpus, repeats } => {
            let figures = crate::dataset::bench::tokenize(&dataset_dir, dump_corpus.as_deref(), repeats)?;
            print_json(&figures)?;
        }
        BenchCommand::Capture { sessions, turns } => {
            let work = std::env::temp_dir().join(format!("understudy-bench-capture-{}", ulid::Ulid::new()));
            print_json(&crate::capture::bench::capture(sessions, turns, &work)?)?;
        }
        BenchCommand::Constrain { model, calls } => {
            let path = std::path::PathBuf::from(&model);
            let path = if path.exists() { path } else { super::generate::model_dir(config, &model)? };
            let source = crate::model::source::ModelSource::parse(&path.display().to_string())?;
            let (tokenizer, template) = source.tokenizer_and_template(|_| Vec::new())?;
            print_json(&constrain(&tokenizer, &template, calls))?;
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

/// Decode forced calls of every default tool with logits that favour a fitting token (best
/// case) and with random logits (worst case: the sampler's choices rarely fit, so the whole
/// vocabulary gets masked), timing each pick against plain sampling of the same logits.
fn constrain(
    tokenizer: &tokenizers::Tokenizer,
    template: &crate::model::chat_template::ChatTemplate,
    calls: u64,
) -> serde_json::Value {
    use crate::model::constrain::{CallStyle, ConstrainedPicker, Grammar, TokenBytes};
    use crate::model::generate::{sample, GenerateOptions};
    use rand::{Rng, SeedableRng};
    use std::sync::Arc;

    let vocab = tokenizer.get_vocab_size(true);
    let started = Instant::now();
    let tokens = Arc::new(TokenBytes::new(tokenizer, vocab));
    let table_ms = started.elapsed().as_secs_f64() * 1e3;
    let stops: Vec<u32> = template.end_of_turn.iter().filter_map(|t| tokenizer.token_to_id(t)).collect();
    let schemas: Vec<(String, serde_json::Value)> = crate::traces::tools::default_tools()
        .iter()
        .filter_map(|t| Some((t["function"]["name"].as_str()?.to_string(), t["function"]["parameters"].clone())))
        .collect();
    let options = GenerateOptions { max_tokens: 0, ..GenerateOptions::default() };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut case = |favour: bool| {
        let (mut picks, mut pick_seconds, mut plain_seconds, mut complete) = (0u64, 0.0, 0.0, 0u64);
        for call in 0..calls {
            let (name, _) = &schemas[call as usize % schemas.len()];
            let grammar = Arc::new(Grammar::tool_call(&schemas, Some(name), CallStyle::Hermes));
            let mut picker = ConstrainedPicker::new(grammar, Arc::clone(&tokens), stops.clone());
            let mut sampler = rand_chacha::ChaCha8Rng::seed_from_u64(call);
            for _ in 0..200 {
                let mut logits: Vec<f32> = (0..vocab).map(|_| rng.random::<f32>() * 10.0).collect();
                if favour {
                    // A model that knows the format: a short token that fits scores highest.
                    for (id, bytes) in [(b"\"" as &[u8]), b"a", b"}", b"\n</tool_call>", b":", b" "].iter().enumerate()
                    {
                        if let Some(found) = tokenizer.token_to_id(&String::from_utf8_lossy(bytes)) {
                            logits[found as usize] = 20.0 + id as f32;
                        }
                    }
                }
                let plain = Instant::now();
                std::hint::black_box(sample(&logits, &options, &mut sampler));
                plain_seconds += plain.elapsed().as_secs_f64();
                let timed = Instant::now();
                let id = picker.pick(&logits, |l| sample(l, &options, &mut sampler));
                pick_seconds += timed.elapsed().as_secs_f64();
                picks += 1;
                if stops.contains(&id) {
                    complete += 1;
                    break;
                }
            }
        }
        serde_json::json!({
            "tokens": picks,
            "calls_completed": complete,
            "calls": calls,
            "constrained_ms_per_token": pick_seconds * 1e3 / picks.max(1) as f64,
            "plain_ms_per_token": plain_seconds * 1e3 / picks.max(1) as f64,
        })
    };
    let best = case(true);
    let worst = case(false);
    serde_json::json!({
        "benchmark": "constrain",
        "vocab_size": vocab,
        "token_table_ms": table_ms,
        "favourable_logits": best,
        "random_logits": worst,
    })
}
