//! SFT throughput on the `tiny` preset: a few optimizer steps on random tokens (every position
//! trained), or on a built dataset's examples as the trainer batches them, timed, with the
//! process's peak resident memory, on the CPU or a CUDA device. Printed by
//! `understudy bench sft|lora` and compared with PyTorch by `bench/sft_speed.py`.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::optimizer::{clip_global_norm, AdamW};
use super::params::{init_varmap, ordered_vars};
use crate::model::llama::{masked_cross_entropy, Llama, LlamaConfig};

#[derive(Debug, serde::Serialize)]
pub struct SftFigures {
    pub benchmark: String,
    pub device: String,
    pub config: LlamaConfig,
    pub parameters: usize,
    pub batch_size: usize,
    pub seq_len: usize,
    pub steps: usize,
    pub seconds_per_step: f64,
    pub tokens_per_second: f64,
    pub peak_rss_mib: Option<f64>,
    pub threads: usize,
}

fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn device_label(device: &Device) -> &'static str {
    if device.is_cuda() {
        "cuda"
    } else {
        "cpu"
    }
}

pub fn sft(
    vocab_size: usize,
    batch_size: usize,
    seq_len: usize,
    steps: usize,
    device: &Device,
) -> candle_core::Result<SftFigures> {
    let device = device.clone();
    let config = LlamaConfig::tiny(vocab_size);
    let varmap = init_varmap(&config, 0, &device)?;
    let model = Llama::new(config.clone(), VarBuilder::from_varmap(&varmap, DType::F32, &device))?;
    let vars = ordered_vars(&config, &varmap);
    run_steps(format!("sft_tiny_{}", device_label(&device)), &model, &vars, batch_size, seq_len, steps)
}

/// LoRA steps (rank 8 on q/k/v/o) on a pretrained base, e.g. SmolLM2-135M from its GGUF.
pub fn lora(
    config: LlamaConfig,
    base: std::collections::HashMap<String, Tensor>,
    batch_size: usize,
    seq_len: usize,
    steps: usize,
    device: &Device,
) -> candle_core::Result<SftFigures> {
    let device = device.clone();
    let lora = crate::model::llama::LoraConfig {
        rank: 8,
        alpha: 16.0,
        dropout: 0.0,
        targets: ["q_proj", "k_proj", "v_proj", "o_proj"].map(String::from).to_vec(),
    };
    let varmap = super::params::init_lora_varmap(&config, &lora, 0, &device)?;
    let model = Llama::new_with_lora(
        config.clone(),
        VarBuilder::from_tensors(base, DType::F32, &device),
        Some((&lora, VarBuilder::from_varmap(&varmap, DType::F32, &device))),
    )?;
    let vars = super::params::ordered_lora_vars(&config, &lora, &varmap);
    run_steps(format!("lora_r8_{}", device_label(&device)), &model, &vars, batch_size, seq_len, steps)
}

/// SFT steps of the tiny preset on the first examples of a dataset's training split, in the
/// order the file holds them, batched as the trainer batches them (right-padded, assistant
/// tokens trained, a shared opening run once per batch). Tokens/s counts every example token.
pub fn sft_on_dataset(
    dataset_dir: &std::path::Path,
    batch_size: usize,
    max_len: usize,
    steps: usize,
    device: &Device,
) -> Result<SftFigures, super::sft::TrainError> {
    use super::sft::TrainError;
    let fail =
        |what: &str, e: &dyn std::fmt::Display| TrainError::Config(format!("{}/{what}: {e}", dataset_dir.display()));
    let stats: serde_json::Value = std::fs::read_to_string(dataset_dir.join("stats.json"))
        .map_err(|e| fail("stats.json", &e))
        .and_then(|text| serde_json::from_str(&text).map_err(|e| fail("stats.json", &e)))?;
    let vocab_size = stats["vocab_size"].as_u64().ok_or_else(|| fail("stats.json", &"no vocab_size"))? as usize;
    let file = std::fs::File::open(dataset_dir.join("train.tokens")).map_err(|e| fail("train.tokens", &e))?;
    let examples =
        crate::dataset::cache::read(&mut std::io::BufReader::new(file)).map_err(|e| fail("train.tokens", &e))?;
    let needed = batch_size * (steps + 1);
    if examples.len() < needed {
        return Err(TrainError::Config(format!(
            "{}: {} training examples, fewer than the {needed} that {steps} steps of {batch_size} need (one more batch warms up)",
            dataset_dir.display(),
            examples.len()
        )));
    }
    let device = device.clone();
    let config = LlamaConfig::tiny(vocab_size);
    let varmap = init_varmap(&config, 0, &device)?;
    let model = Llama::new(config.clone(), VarBuilder::from_varmap(&varmap, DType::F32, &device))?;
    let vars = ordered_vars(&config, &varmap);
    let parameters = vars.iter().map(|(_, v, _)| v.elem_count()).sum();
    let mut optimizer = AdamW::new(&vars, 0.01)?;
    let (mut seconds, mut tokens) = (0.0, 0usize);
    for (step, chunk) in examples[..needed].chunks(batch_size).enumerate() {
        let chosen: Vec<&crate::dataset::cache::Example> = chunk.iter().collect();
        let started = Instant::now();
        let batch = super::sft::batch_tensors(&chosen, max_len, 1.0, &device)?;
        update(&super::sft::batch_loss(&model, &batch)?, &vars, &mut optimizer, &device)?;
        // The first step pays one-time allocation costs; it is not counted.
        if step > 0 {
            seconds += started.elapsed().as_secs_f64();
            tokens += chunk.iter().map(|e| e.ids.len().min(max_len)).sum::<usize>();
        }
    }
    Ok(SftFigures {
        device: format!("{device:?}"),
        benchmark: format!("sft_tiny_dataset_{}", device_label(&device)),
        config,
        parameters,
        batch_size,
        seq_len: max_len,
        steps,
        seconds_per_step: seconds / steps.max(1) as f64,
        tokens_per_second: tokens as f64 / seconds.max(1e-9),
        peak_rss_mib: peak_rss_mib(),
        threads: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
    })
}

/// One optimizer step on `loss` (clipped, AdamW at 1e-3), finished on the device.
fn update(
    loss: &Tensor,
    vars: &[(String, candle_core::Var, bool)],
    optimizer: &mut AdamW,
    device: &Device,
) -> candle_core::Result<()> {
    let store = loss.backward()?;
    let mut grads: Vec<Option<Tensor>> = vars.iter().map(|(_, v, _)| store.get(v.as_tensor()).cloned()).collect();
    clip_global_norm(&mut grads, 1.0)?;
    optimizer.apply(vars, &grads, 1e-3)?;
    device.synchronize()
}

fn run_steps(
    benchmark: String,
    model: &Llama,
    vars: &[(String, candle_core::Var, bool)],
    batch_size: usize,
    seq_len: usize,
    steps: usize,
) -> candle_core::Result<SftFigures> {
    let device = model.cos_device();
    let config = model.config.clone();
    let vocab_size = config.vocab_size;
    let vars = vars.to_vec();
    let parameters = vars.iter().map(|(_, v, _)| v.elem_count()).sum();
    let mut optimizer = AdamW::new(&vars, 0.01)?;
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let mut timings = Vec::new();
    for step in 0..steps + 1 {
        let ids: Vec<u32> = (0..batch_size * (seq_len + 1)).map(|_| rng.random_range(0..vocab_size as u32)).collect();
        let all = Tensor::from_vec(ids, (batch_size, seq_len + 1), &device)?;
        let started = Instant::now();
        let inputs = all.narrow(1, 0, seq_len)?.contiguous()?;
        let targets = all.narrow(1, 1, seq_len)?.contiguous()?.flatten_all()?;
        let logits = model.forward(&inputs, None)?.reshape((batch_size * seq_len, vocab_size))?;
        let mask = Tensor::ones(batch_size * seq_len, DType::F32, &device)?;
        update(&masked_cross_entropy(&logits, &targets, &mask)?, &vars, &mut optimizer, &device)?;
        // The first step pays one-time allocation costs; it is not counted.
        if step > 0 {
            timings.push(started.elapsed().as_secs_f64());
        }
    }
    let seconds_per_step = timings.iter().sum::<f64>() / timings.len().max(1) as f64;
    Ok(SftFigures {
        device: format!("{device:?}"),
        benchmark,
        config,
        parameters,
        batch_size,
        seq_len,
        steps,
        seconds_per_step,
        tokens_per_second: (batch_size * seq_len) as f64 / seconds_per_step,
        peak_rss_mib: peak_rss_mib(),
        threads: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
    })
}
