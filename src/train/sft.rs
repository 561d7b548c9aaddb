//! Supervised fine-tuning on a dataset's token cache: right-padded batches, loss only on the
//! assistant tokens the dataset masked in, gradient accumulation, global-norm clipping, AdamW
//! with warmup + cosine, eval loss on the validation split, checkpoints (weights, optimizer
//! moments, step and data position) every N steps and at the end. A resumed run is
//! step-for-step identical to an uninterrupted one: data order and initialisation derive from
//! the seed alone.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::optimizer::{accumulate, clip_global_norm, learning_rate, AdamW};
use super::params::{init_varmap, ordered_vars};
use crate::dataset::cache::{self, Example};
use crate::model::llama::{masked_cross_entropy, Llama, LlamaConfig};
use crate::traces::preference::PreferencePair;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SftConfig {
    pub epochs: u32,
    pub max_steps: Option<u64>,
    /// Stop after the step that crosses this much training time (summed over resumes), with
    /// a checkpoint and the eval loss; the learning-rate schedule still follows the steps.
    #[serde(default)]
    pub max_minutes: Option<f64>,
    pub lr: f64,
    pub batch_size: usize,
    pub grad_accum: usize,
    pub warmup_steps: u64,
    pub weight_decay: f64,
    pub max_grad_norm: f64,
    pub eval_every: u64,
    pub checkpoint_every: u64,
    /// Longest training sequence; longer examples are cut (the dataset already cut at turns).
    pub max_seq_len: usize,
    /// Validation examples used for the eval loss.
    pub eval_examples: usize,
    pub seed: u64,
    pub device: String,
    /// Train LoRA adapters on a frozen pretrained base instead of every weight.
    #[serde(default)]
    pub lora: Option<crate::model::llama::LoraConfig>,
    /// Loss weight of the tokens of a tool call's name (the tool choice) against 1 for every
    /// other trained token. The eval loss stays unweighted.
    #[serde(default = "plain_weight")]
    pub tool_name_weight: f64,
}

fn plain_weight() -> f64 {
    1.0
}

impl Default for SftConfig {
    fn default() -> Self {
        SftConfig {
            epochs: 1,
            max_steps: None,
            max_minutes: None,
            lr: 3e-3,
            batch_size: 4,
            grad_accum: 1,
            warmup_steps: 10,
            weight_decay: 0.01,
            max_grad_norm: 1.0,
            eval_every: 25,
            checkpoint_every: 50,
            max_seq_len: 2048,
            eval_examples: 16,
            seed: 0,
            device: "cpu".into(),
            lora: None,
            tool_name_weight: plain_weight(),
        }
    }
}

impl SftConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(self.lr > 0.0 && self.lr < 1.0) {
            return Err("lr: must be between 0 and 1".into());
        }
        if self.batch_size == 0 || self.batch_size > 1024 {
            return Err("batch_size: must be 1 to 1024".into());
        }
        if self.grad_accum == 0 || self.grad_accum > 1024 {
            return Err("grad_accum: must be 1 to 1024".into());
        }
        if self.epochs == 0 && self.max_steps.is_none() {
            return Err("epochs: at least one epoch (or --max-steps)".into());
        }
        if !(self.tool_name_weight >= 1.0 && self.tool_name_weight <= 100.0) {
            return Err("tool_name_weight: must be between 1 and 100".into());
        }
        if let Some(lora) = &self.lora {
            lora.validate()?;
        }
        Ok(())
    }
}

/// What the trainer reports as it goes; the job layer stores it.
pub trait TrainHooks {
    fn step(&mut self, step: u64, total: u64, metrics: &[(&str, f64)]) -> Result<(), TrainError>;
    fn checkpoint(&mut self, step: u64, dir: &Path) -> Result<(), TrainError>;
    fn log(&mut self, message: &str);
    /// Preference pairs mined from this step's rollouts (see `eval::mined`), to be stored.
    fn mined_pairs(&mut self, pairs: &[PreferencePair]) -> Result<(), TrainError> {
        let _ = pairs;
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{0}")]
    Config(String),
    #[error("the loss became {value} at step {step}; training stopped (lower --lr or check the data)")]
    NotFinite { step: u64, value: f64 },
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("cancelled")]
    Cancelled,
    #[error("interrupted by shutdown")]
    Interrupted,
    #[error("{0}")]
    Other(String),
}

/// Progress saved with each checkpoint.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TrainState {
    pub step: u64,
    pub total_steps: u64,
    pub first_loss: Option<f64>,
    pub last_loss: Option<f64>,
    pub last_eval_loss: Option<f64>,
    pub tokens_seen: u64,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainSummary {
    pub steps: u64,
    pub first_loss: f64,
    pub final_loss: f64,
    pub final_eval_loss: Option<f64>,
    pub tokens_per_second: f64,
    pub model_dir: PathBuf,
    /// The run stopped at `max_minutes` before its last step.
    #[serde(default)]
    pub stopped_at_time_budget: bool,
}

fn read_examples(path: &Path) -> Result<Vec<Example>, TrainError> {
    Ok(cache::read(&mut std::io::BufReader::new(std::fs::File::open(path)?))?)
}

/// A batch shares its leading positions only when they save at least this many per extra row.
const MIN_SHARED: usize = 16;

/// One micro-batch. Examples of one dataset mostly open with the same tokens (the system prompt
/// and the tool schemas: over half of a bootstrap example), so the longest prefix every example
/// starts with — cut before the first trained position — is `shared`, `(1, p)`, run once for the
/// whole batch; `inputs` `(b, t)` continue from it, and `targets` and `mask` (flattened to
/// `b * t`) cover only those positions. The loss and its gradients are the unshared batch's.
pub(super) struct Batch {
    shared: Option<Tensor>,
    inputs: Tensor,
    targets: Tensor,
    mask: Tensor,
    /// Positions that train.
    trained: usize,
}

/// How many leading positions every row of a batch has in common and none of them trains, given
/// each row's ids (within the length limit) and its first trained position; 0 when sharing does
/// not pay (one row, or a short opening).
pub(super) fn shared_opening(rows: &[(&[u32], usize)]) -> usize {
    let Some(((first, _), rest)) = rows.split_first() else { return 0 };
    if rest.is_empty() {
        return 0;
    }
    let mut shared = rows.iter().map(|(_, trained)| *trained).min().unwrap_or(0);
    for (ids, _) in rest {
        shared = shared.min(first.iter().zip(ids.iter()).take_while(|(a, b)| a == b).count());
    }
    // Every row keeps at least one position of its own.
    let longest = rows.iter().map(|(ids, _)| ids.len()).max().unwrap_or(0);
    let shared = shared.min(longest.saturating_sub(2));
    if shared * rest.len() < MIN_SHARED {
        0
    } else {
        shared
    }
}

/// `shared_opening` for dataset examples: position p predicts token p + 1, so the first trained
/// position is one before the first masked-in token.
fn shared_prefix(examples: &[&Example], max_len: usize) -> usize {
    let rows: Vec<(&[u32], usize)> = examples
        .iter()
        .map(|e| {
            let n = e.ids.len().min(max_len);
            (&e.ids[..n], (1..n).find(|&i| e.mask[i] != 0).map_or(n.saturating_sub(1), |i| i - 1))
        })
        .collect();
    shared_opening(&rows)
}

/// The rows of a batch, each position's loss weight from its mask byte: 0 untrained, 1 trained,
/// `tool_name_weight` inside a tool call's name.
pub(super) fn batch_tensors(
    examples: &[&Example],
    max_len: usize,
    tool_name_weight: f32,
    device: &Device,
) -> candle_core::Result<Batch> {
    let shared = shared_prefix(examples, max_len);
    let longest = examples.iter().map(|e| e.ids.len().min(max_len)).max().unwrap_or(2).saturating_sub(1).max(1);
    let t = longest - shared;
    let mut inputs = Vec::with_capacity(examples.len() * t);
    let mut targets = Vec::with_capacity(examples.len() * t);
    let mut mask = Vec::with_capacity(examples.len() * t);
    let mut trained = 0;
    for example in examples {
        let n = example.ids.len().min(max_len);
        for position in shared..shared + t {
            if position + 1 < n {
                inputs.push(example.ids[position]);
                targets.push(example.ids[position + 1]);
                let m = match example.mask[position + 1] {
                    0 => 0.0,
                    cache::TOOL_NAME => tool_name_weight,
                    _ => 1.0,
                };
                trained += usize::from(m > 0.0);
                mask.push(m);
            } else {
                inputs.push(0);
                targets.push(0);
                mask.push(0.0);
            }
        }
    }
    let b = examples.len();
    let shared = match shared {
        0 => None,
        p => Some(Tensor::from_slice(&examples[0].ids[..p], (1, p), device)?),
    };
    Ok(Batch {
        shared,
        inputs: Tensor::from_vec(inputs, (b, t), device)?,
        targets: Tensor::from_vec(targets, b * t, device)?,
        mask: Tensor::from_vec(mask, b * t, device)?,
        trained,
    })
}

/// Loss of one batch, computing logits only where the mask trains.
pub(super) fn batch_loss(model: &Llama, batch: &Batch) -> candle_core::Result<Tensor> {
    let (b, t) = batch.inputs.dims2()?;
    let mut cache = match &batch.shared {
        Some(shared) => Some(model.prefill(shared)?),
        None => None,
    };
    let hidden = model.hidden(&batch.inputs, cache.as_mut())?.reshape((b * t, model.config.hidden_size))?;
    let (rows, weights): (Vec<u32>, Vec<f32>) = batch
        .mask
        .to_vec1::<f32>()?
        .into_iter()
        .enumerate()
        .filter(|(_, m)| *m > 0.0)
        .map(|(i, m)| (i as u32, m))
        .unzip();
    if rows.is_empty() {
        return Tensor::new(0f32, batch.inputs.device());
    }
    let index = Tensor::from_vec(rows, weights.len(), batch.inputs.device())?;
    let hidden = hidden.index_select(&index, 0)?;
    let logits = model.logits(&hidden)?;
    let targets = batch.targets.index_select(&index, 0)?;
    let weights = Tensor::from_vec(weights, index.dim(0)?, batch.inputs.device())?;
    masked_cross_entropy(&logits, &targets, &weights)
}

/// Bytes the activations of one micro-batch of `rows` sequences of `positions` tokens keep
/// for the backward pass, in f32: per layer, the attention scores and probabilities (rows ·
/// heads · positions² each) and about eight hidden and three intermediate widths per token (q, k,
/// v, the attention output, the norms, gate, up and their product). A lower bound: the backward
/// pass allocates its own copies on top.
pub(super) fn activation_bytes(model: &LlamaConfig, rows: usize, positions: usize) -> u64 {
    let (b, t) = (rows as u64, positions as u64);
    let attention = 2 * b * model.num_attention_heads as u64 * t * t;
    let per_token = b * t * (8 * model.hidden_size as u64 + 3 * model.intermediate_size as u64);
    4 * (attention + per_token) * model.num_hidden_layers as u64
}

/// The memory the system can still hand out (Linux's `MemAvailable`); `None` where unknown.
fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Refuses, before the first step, a batch shape whose activations alone exceed the memory
/// available (`longest`: the dataset's longest example), instead of being killed by the
/// operating system mid-run.
pub(super) fn check_memory(
    model: &LlamaConfig,
    config: &SftConfig,
    longest: usize,
    available: Option<u64>,
) -> Result<(), TrainError> {
    let positions = longest.min(config.max_seq_len);
    let needed = activation_bytes(model, config.batch_size, positions);
    match available {
        Some(available) if needed > available => {
            let gib = |bytes: u64| bytes as f64 / f64::from(1u32 << 30);
            Err(TrainError::Config(format!(
                "batch_size: a batch of {} sequences of {positions} tokens needs at least {:.1} GiB for its activations, \
                 but {:.1} GiB of memory is available: lower --batch-size (raise --grad-accum to keep the step's size) \
                 or --max-seq-len",
                config.batch_size,
                gib(needed),
                gib(available)
            )))
        }
        _ => Ok(()),
    }
}

/// Batches are formed inside windows of this many batches, sorted by length.
const LENGTH_WINDOW: usize = 16;

/// The order of training examples in an epoch: a seeded shuffle, then length-grouped so each
/// batch holds examples of similar length (less padding): every window of `LENGTH_WINDOW`
/// batches is sorted by length, cut into batches, and the batches are shuffled again.
fn epoch_order(lengths: &[usize], batch_size: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    order.shuffle(&mut rng);
    let batch_size = batch_size.max(1);
    let mut batches: Vec<Vec<usize>> = Vec::new();
    for window in order.chunks_mut(batch_size * LENGTH_WINDOW) {
        window.sort_by_key(|&i| lengths[i]);
        batches.extend(window.chunks(batch_size).map(<[usize]>::to_vec));
    }
    // A short last batch stays last, so every other batch starts at a multiple of batch_size.
    let short = if batches.last().is_some_and(|b| b.len() < batch_size) { batches.pop() } else { None };
    batches.shuffle(&mut rng);
    batches.extend(short);
    batches.concat()
}

pub fn eval_loss(
    model: &Llama,
    examples: &[Example],
    config: &SftConfig,
    device: &Device,
) -> Result<Option<f64>, TrainError> {
    let chosen: Vec<&Example> = examples.iter().take(config.eval_examples).collect();
    if chosen.is_empty() {
        return Ok(None);
    }
    let (mut total, mut weight) = (0.0, 0.0);
    for chunk in chosen.chunks(config.batch_size) {
        let batch = batch_tensors(chunk, config.max_seq_len, 1.0, device)?;
        if batch.trained == 0 {
            continue;
        }
        let loss = batch_loss(model, &batch)?.to_scalar::<f32>()? as f64;
        total += loss * batch.trained as f64;
        weight += batch.trained as f64;
    }
    Ok((weight > 0.0).then(|| total / weight))
}

/// Where the weights start.
pub enum Init {
    /// Seeded random initialisation (the `tiny` preset).
    Scratch,
    /// A pretrained model's tensors, by Hugging Face name.
    Pretrained(std::collections::HashMap<String, Tensor>),
}

/// Train. `resume` is a checkpoint directory to continue from. Writes checkpoints and the final
/// model (config.json + model.safetensors; with LoRA also adapter.safetensors, and the weights
/// merged) under `run_dir`.
pub fn train(
    dataset_dir: &Path,
    model_config: &LlamaConfig,
    config: &SftConfig,
    init: Init,
    run_dir: &Path,
    resume: Option<&Path>,
    hooks: &mut dyn TrainHooks,
) -> Result<TrainSummary, TrainError> {
    config.validate().map_err(TrainError::Config)?;
    let device = crate::model::llama::device_for(&config.device).map_err(TrainError::Config)?;
    let train_examples = read_examples(&dataset_dir.join("train.tokens"))?;
    let val_examples = read_examples(&dataset_dir.join("val.tokens"))?;
    if train_examples.is_empty() {
        return Err(TrainError::Config("the dataset has no training examples".into()));
    }
    let Trainable { varmap, model, vars, frozen_base } =
        Trainable::new(model_config, config.lora.as_ref(), init, config.seed, &device)?;
    let max_id = train_examples.iter().flat_map(|e| e.ids.iter()).copied().max().unwrap_or(0);
    if max_id as usize >= model_config.vocab_size {
        return Err(TrainError::Config(format!(
            "the dataset has token id {max_id} but the model's vocabulary has {} entries: build the dataset with this model's tokenizer (--model)",
            model_config.vocab_size
        )));
    }
    let lengths: Vec<usize> = train_examples.iter().map(|e| e.ids.len()).collect();
    if device.is_cpu() {
        let longest = lengths.iter().copied().max().unwrap_or(0);
        check_memory(model_config, config, longest, available_memory())?;
    }
    let mut optimizer = AdamW::new(&vars, config.weight_decay)?;
    let per_step = config.batch_size * config.grad_accum;
    let steps_per_epoch = train_examples.len().div_ceil(per_step) as u64;
    let total_steps =
        config.max_steps.unwrap_or(u64::MAX).min(steps_per_epoch * u64::from(config.epochs.max(1))).max(1);

    let mut state = TrainState { total_steps, ..TrainState::default() };
    if let Some(checkpoint) = resume {
        let saved: TrainState =
            load_checkpoint(checkpoint, &varmap, &[], &mut optimizer, &vars, |s: &TrainState| s.step, hooks)?;
        state = TrainState { total_steps, ..saved };
    }
    std::fs::create_dir_all(run_dir)?;
    std::fs::write(
        run_dir.join("config.json"),
        serde_json::to_string_pretty(model_config).expect("config serialises"),
    )?;
    let started = Instant::now();
    let seconds_before = state.seconds;
    let tokens_before = state.tokens_seen;
    while state.step < total_steps {
        let step_started = Instant::now();
        let epoch = state.step / steps_per_epoch;
        let order = epoch_order(&lengths, config.batch_size, config.seed, epoch);
        let start = ((state.step % steps_per_epoch) as usize) * per_step;
        let mut grads: Vec<Option<Tensor>> = vec![None; vars.len()];
        let mut step_loss = 0.0;
        let mut step_tokens = 0usize;
        let mut micro_batches = 0;
        for micro in 0..config.grad_accum {
            let from = start + micro * config.batch_size;
            let chosen: Vec<&Example> =
                order.iter().skip(from).take(config.batch_size).map(|&i| &train_examples[i]).collect();
            if chosen.is_empty() {
                break;
            }
            let batch = batch_tensors(&chosen, config.max_seq_len, config.tool_name_weight as f32, &device)?;
            if batch.trained == 0 {
                continue;
            }
            // LoRA dropout masks depend only on the seed, step and micro-batch.
            model.dropout_seed.set(Some(config.seed ^ (state.step << 16) ^ micro as u64));
            let loss = batch_loss(&model, &batch)?;
            model.dropout_seed.set(None);
            let value = loss.to_scalar::<f32>()? as f64;
            if !value.is_finite() {
                return Err(TrainError::NotFinite { step: state.step + 1, value });
            }
            let scaled = (loss / config.grad_accum as f64)?;
            let store = scaled.backward()?;
            accumulate(&mut grads, &store, &vars)?;
            step_loss += value;
            step_tokens += chosen.iter().map(|e| e.ids.len().min(config.max_seq_len)).sum::<usize>();
            micro_batches += 1;
        }
        if micro_batches == 0 {
            state.step += 1;
            continue;
        }
        let loss = step_loss / micro_batches as f64;
        let grad_norm = clip_global_norm(&mut grads, config.max_grad_norm)?;
        let lr = learning_rate(state.step, total_steps, config.warmup_steps, config.lr, 0.1);
        optimizer.apply(&vars, &grads, lr)?;
        state.step += 1;
        state.tokens_seen += step_tokens as u64;
        state.first_loss.get_or_insert(loss);
        state.last_loss = Some(loss);
        state.seconds = seconds_before + started.elapsed().as_secs_f64();
        let step_seconds = step_started.elapsed().as_secs_f64();
        let mut metrics = vec![
            ("loss", loss),
            ("lr", lr),
            ("grad_norm", grad_norm),
            ("tokens_per_second", step_tokens as f64 / step_seconds.max(1e-9)),
        ];
        let out_of_time = state.step < total_steps && config.max_minutes.is_some_and(|m| state.seconds >= m * 60.0);
        if state.step.is_multiple_of(config.eval_every) || state.step == total_steps || out_of_time {
            if let Some(eval) = eval_loss(&model, &val_examples, config, &device)? {
                state.last_eval_loss = Some(eval);
                metrics.push(("eval_loss", eval));
            }
        }
        hooks.step(state.step, total_steps, &metrics)?;
        if state.step.is_multiple_of(config.checkpoint_every) || state.step == total_steps || out_of_time {
            let dir = save_checkpoint(run_dir, &varmap, &[], &optimizer, &vars, state.step, &state)?;
            hooks.checkpoint(state.step, &dir)?;
        }
        if out_of_time {
            break;
        }
    }
    let stopped_at_time_budget = state.step < total_steps;
    if state.first_loss.is_none() {
        // Every batch was skipped: no assistant token lies within the cut. Registering an
        // untrained model with a NaN loss would store a result no reader can load back.
        return Err(TrainError::Config(format!(
            "no training example has an assistant token within the first {} tokens: nothing was trained (raise --max-seq-len)",
            config.max_seq_len
        )));
    }
    let weights = TrainedWeights { varmap: &varmap, vars: &vars, frozen_base: frozen_base.as_ref() };
    let model_dir = save_model(run_dir, &weights, config.lora.as_ref(), model_config, dataset_dir)?;
    let seconds = state.seconds.max(1e-9);
    Ok(TrainSummary {
        steps: state.step,
        first_loss: state.first_loss.unwrap_or(f64::NAN),
        final_loss: state.last_loss.unwrap_or(f64::NAN),
        final_eval_loss: state.last_eval_loss,
        tokens_per_second: (state.tokens_seen - tokens_before.min(state.tokens_seen)) as f64
            / (seconds - seconds_before).max(1e-9),
        model_dir,
        stopped_at_time_budget,
    })
}

/// The weights a run trains: every parameter, or LoRA adapters on a frozen base.
pub(super) struct Trainable {
    pub varmap: candle_nn::VarMap,
    pub model: Llama,
    /// The trained variables in a stable order (for the optimizer state).
    pub vars: Vec<(String, candle_core::Var, bool)>,
    /// With LoRA: the frozen base the adapters are merged onto when the model is saved.
    pub frozen_base: Option<std::collections::HashMap<String, Tensor>>,
}

impl Trainable {
    pub fn new(
        model_config: &LlamaConfig,
        lora: Option<&crate::model::llama::LoraConfig>,
        init: Init,
        seed: u64,
        device: &Device,
    ) -> Result<Trainable, TrainError> {
        let full = |varmap: candle_nn::VarMap| -> Result<Trainable, TrainError> {
            let model = Llama::new(model_config.clone(), VarBuilder::from_varmap(&varmap, DType::F32, device))?;
            let vars = ordered_vars(model_config, &varmap);
            Ok(Trainable { varmap, model, vars, frozen_base: None })
        };
        match (lora, init) {
            (None, Init::Scratch) => full(init_varmap(model_config, seed, device)?),
            (None, Init::Pretrained(tensors)) => full(super::params::varmap_from_tensors(model_config, &tensors)?),
            (Some(_), Init::Scratch) => {
                Err(TrainError::Config("lora: LoRA needs a pretrained base model (--model PATH), not tiny".into()))
            }
            (Some(lora), Init::Pretrained(tensors)) => {
                let varmap = super::params::init_lora_varmap(model_config, lora, seed, device)?;
                let base = VarBuilder::from_tensors(tensors.clone(), DType::F32, device);
                let adapters = VarBuilder::from_varmap(&varmap, DType::F32, device);
                let model = Llama::new_with_lora(model_config.clone(), base, Some((lora, adapters)))?;
                let vars = super::params::ordered_lora_vars(model_config, lora, &varmap);
                Ok(Trainable { varmap, model, vars, frozen_base: Some(tensors) })
            }
        }
    }
}

/// What `save_model` writes: the trained variables and, with LoRA, the frozen base.
pub(super) struct TrainedWeights<'a> {
    pub varmap: &'a candle_nn::VarMap,
    pub vars: &'a [(String, candle_core::Var, bool)],
    pub frozen_base: Option<&'a std::collections::HashMap<String, Tensor>>,
}

/// Write the trained model to `run_dir/model` (whole or absent): config.json, model.safetensors
/// (with LoRA: the merged weights, plus adapter.safetensors and adapter_config.json), and the
/// tokenizer and chat template copied from `files_from`.
pub(super) fn save_model(
    run_dir: &Path,
    trained: &TrainedWeights<'_>,
    lora: Option<&crate::model::llama::LoraConfig>,
    model_config: &LlamaConfig,
    files_from: &Path,
) -> Result<PathBuf, TrainError> {
    let model_dir = run_dir.join("model");
    let staging = run_dir.join("model.partial");
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    std::fs::create_dir_all(&staging)?;
    match (lora, trained.frozen_base) {
        (Some(lora), Some(base)) => {
            trained.varmap.save(staging.join("adapter.safetensors"))?;
            let adapters: std::collections::HashMap<String, Tensor> =
                trained.vars.iter().map(|(name, var, _)| (name.clone(), var.as_tensor().clone())).collect();
            let merged = super::params::merge_lora(lora, base, &adapters)?;
            candle_core::safetensors::save(&merged, staging.join("model.safetensors"))?;
            std::fs::write(
                staging.join("adapter_config.json"),
                serde_json::to_string_pretty(lora).expect("lora serialises"),
            )?;
        }
        _ => trained.varmap.save(staging.join("model.safetensors"))?,
    }
    std::fs::write(
        staging.join("config.json"),
        serde_json::to_string_pretty(model_config).expect("config serialises"),
    )?;
    for name in ["tokenizer.json", "chat_template.jinja", "template.json"] {
        std::fs::copy(files_from.join(name), staging.join(name))?;
    }
    if model_dir.exists() {
        std::fs::remove_dir_all(&model_dir)?;
    }
    std::fs::rename(&staging, &model_dir)?;
    Ok(model_dir)
}

/// The message of the first failed check of a trainer config (each names its flag), then the
/// LoRA settings'.
pub(super) fn first_failure(
    checks: &[(bool, &str)],
    lora: Option<&crate::model::llama::LoraConfig>,
) -> Result<(), String> {
    if let Some((_, message)) = checks.iter().find(|(ok, _)| !ok) {
        return Err(message.to_string());
    }
    lora.map_or(Ok(()), crate::model::llama::LoraConfig::validate)
}

/// Read a checkpoint `save_checkpoint` wrote back into the variables and optimizer; returns its
/// state. `step_of` reads the step from that state (each trainer keeps its own).
pub(super) fn load_checkpoint<S: serde::de::DeserializeOwned>(
    checkpoint: &Path,
    varmap: &candle_nn::VarMap,
    extra: &[(&str, &candle_nn::VarMap)],
    optimizer: &mut AdamW,
    vars: &[(String, candle_core::Var, bool)],
    step_of: impl Fn(&S) -> u64,
    hooks: &mut dyn TrainHooks,
) -> Result<S, TrainError> {
    let saved: S = serde_json::from_str(&std::fs::read_to_string(checkpoint.join("state.json"))?)
        .map_err(|e| TrainError::Other(format!("bad checkpoint state: {e}")))?;
    let step = step_of(&saved);
    // `load` needs `&mut`, but the variables are shared: loading writes into them in place.
    let mut loaded = varmap.clone();
    loaded.load(checkpoint.join("model.safetensors"))?;
    for (name, varmap) in extra {
        let mut loaded = (*varmap).clone();
        loaded.load(checkpoint.join(format!("{name}.safetensors")))?;
    }
    optimizer.load(vars, &checkpoint.join("optimizer.safetensors"), step)?;
    hooks.log(&format!("resumed from {} at step {step}", checkpoint.display()));
    Ok(saved)
}

/// Write a checkpoint (whole or absent): the trained variables (`model.safetensors`), any
/// `extra` variables the run trains beside the model (`NAME.safetensors`), the optimizer's
/// moments and the trainer's state.
pub(super) fn save_checkpoint(
    run_dir: &Path,
    varmap: &candle_nn::VarMap,
    extra: &[(&str, &candle_nn::VarMap)],
    optimizer: &AdamW,
    vars: &[(String, candle_core::Var, bool)],
    step: u64,
    state: &impl Serialize,
) -> Result<PathBuf, TrainError> {
    let dir = run_dir.join(format!("checkpoint-{step:06}"));
    let staging = run_dir.join(format!("checkpoint-{step:06}.partial"));
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    std::fs::create_dir_all(&staging)?;
    varmap.save(staging.join("model.safetensors"))?;
    for (name, varmap) in extra {
        varmap.save(staging.join(format!("{name}.safetensors")))?;
    }
    optimizer.save(vars, &staging.join("optimizer.safetensors"))?;
    std::fs::write(staging.join("state.json"), serde_json::to_string_pretty(state).expect("state serialises"))?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::rename(&staging, &dir)?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_whose_activations_cannot_fit_is_refused_before_the_first_step() {
        // SmolLM2-135M's shape: 16 rows of 1,024 tokens was killed by the OS on a 24 GiB machine;
        // 4 rows trained there.
        let smollm2 = LlamaConfig {
            hidden_size: 576,
            intermediate_size: 1536,
            num_hidden_layers: 30,
            num_attention_heads: 9,
            num_key_value_heads: 3,
            ..LlamaConfig::tiny(49_152)
        };
        let machine = Some(23 * (1u64 << 30));
        let config = |batch_size| SftConfig { batch_size, max_seq_len: 1024, ..SftConfig::default() };
        let refused = check_memory(&smollm2, &config(16), 2048, machine).unwrap_err().to_string();
        assert!(refused.starts_with("batch_size: a batch of 16 sequences of 1024 tokens needs at least"), "{refused}");
        assert!(refused.contains("23.0 GiB of memory is available"), "{refused}");
        check_memory(&smollm2, &config(4), 2048, machine).unwrap();
        // Short examples need less than the length limit allows.
        check_memory(&smollm2, &config(16), 300, machine).unwrap();
        check_memory(&smollm2, &config(16), 2048, None).unwrap();
        assert!(activation_bytes(&smollm2, 4, 1024) > 10 * (1u64 << 30));
        // The tiny preset at quickstart's shape stays far below a gigabyte.
        assert!(activation_bytes(&LlamaConfig::tiny(4096), 4, 1024) < 1u64 << 30);
    }

    #[test]
    fn an_epoch_visits_every_example_once_in_length_grouped_batches() {
        use rand::Rng;
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let lengths: Vec<usize> = (0..203).map(|_| rng.random_range(20..600)).collect();
        let padded = |order: &[usize]| -> usize {
            order.chunks(4).map(|b| b.iter().map(|&i| lengths[i]).max().unwrap() * b.len()).sum()
        };
        let order = epoch_order(&lengths, 4, 7, 0);
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..203).collect::<Vec<_>>(), "a permutation");
        assert_eq!(order, epoch_order(&lengths, 4, 7, 0), "seeded");
        assert_ne!(order, epoch_order(&lengths, 4, 7, 1), "each epoch reshuffles");
        let mut plain: Vec<usize> = (0..203).collect();
        plain.shuffle(&mut ChaCha8Rng::seed_from_u64(7));
        let (grouped, shuffled) = (padded(&order), padded(&plain));
        assert!(grouped * 10 < shuffled * 8, "grouped batches pad less: {grouped} vs {shuffled} positions");
        assert_eq!(order[200..].len(), 3, "the short batch is last");
    }
    use crate::train::params::parameter_shapes;

    fn micro_config() -> LlamaConfig {
        LlamaConfig {
            vocab_size: 32,
            hidden_size: 16,
            intermediate_size: 32,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            max_position_embeddings: 64,
            tie_word_embeddings: false,
            rope_scaling: None,
            bos_token_id: None,
            eos_token_id: None,
        }
    }

    fn examples() -> Vec<Example> {
        (0..12u32)
            .map(|k| {
                let ids: Vec<u32> = (0..10).map(|i| (k * 3 + i * 7) % 32).collect();
                let mask = (0..10).map(|i| u8::from(i >= 4)).collect();
                Example { ids, mask }
            })
            .collect()
    }

    #[test]
    fn the_forward_pass_is_causal_batch_independent_and_matches_cached_decoding() {
        use candle_core::IndexOp;
        let config = micro_config();
        let device = Device::Cpu;
        let varmap = init_varmap(&config, 3, &device).unwrap();
        let model = Llama::new(config.clone(), VarBuilder::from_varmap(&varmap, DType::F32, &device)).unwrap();
        let ids: Vec<u32> = (0..12).map(|i| (i * 7 % config.vocab_size) as u32).collect();
        let other: Vec<u32> = (0..12).map(|i| (i * 5 + 3) as u32 % config.vocab_size as u32).collect();
        let row = |ids: &[u32]| Tensor::new(ids, &device).unwrap().unsqueeze(0).unwrap();
        let diff = |a: &Tensor, b: &Tensor| {
            (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
        };
        let full = model.forward(&row(&ids), None).unwrap();
        // Causal: a prefix's logits do not depend on what follows it.
        let prefix = model.forward(&row(&ids[..5]), None).unwrap();
        assert!(diff(&full.i((.., ..5, ..)).unwrap(), &prefix) < 1e-4, "future tokens leak into earlier positions");
        // Batch rows are independent.
        let both = model.forward(&Tensor::new(vec![ids.clone(), other], &device).unwrap(), None).unwrap();
        assert!(diff(&both.i(0..1).unwrap(), &full) < 1e-4, "batch rows interact");
        // Decoding one token at a time with the KV cache gives the same logits.
        let mut cache = crate::model::llama::KvCache::new(config.num_hidden_layers);
        for (position, id) in ids.iter().enumerate() {
            let step = model.forward_last(&row(&[*id]), Some(&mut cache)).unwrap();
            assert!(diff(&step, &full.i((.., position, ..)).unwrap()) < 1e-4, "cached decoding differs at {position}");
        }
        // A cache cut back to a shared prefix, then a multi-token suffix, gives the same logits.
        cache.truncate(7).unwrap();
        assert_eq!(cache.len(), 7);
        let suffix = model.forward(&row(&ids[7..]), Some(&mut cache)).unwrap();
        assert!(diff(&suffix, &full.i((.., 7.., ..)).unwrap()) < 1e-4, "a suffix after a truncated cache differs");
    }

    /// Examples that open with the same untrained tokens, as bootstrap's do (system prompt and
    /// tools), of different lengths; one trains from position 21, the others later.
    fn sharing_examples() -> Vec<Example> {
        let opening: Vec<u32> = (0..24).map(|i| (i * 5 + 1) % 32).collect();
        [(9u32, 14usize, 24usize), (4, 9, 26), (17, 22, 22)]
            .iter()
            .map(|&(k, extra, trained_from)| {
                let ids: Vec<u32> =
                    opening.iter().copied().chain((0..extra as u32).map(|i| (k + i * 3) % 32)).collect();
                let mask = (0..ids.len()).map(|i| u8::from(i >= trained_from)).collect();
                Example { ids, mask }
            })
            .collect()
    }

    #[test]
    fn a_batch_runs_its_shared_opening_once_with_the_same_loss_and_gradients() {
        let config = micro_config();
        let device = Device::Cpu;
        let varmap = init_varmap(&config, 5, &device).unwrap();
        let model = Llama::new(config.clone(), VarBuilder::from_varmap(&varmap, DType::F32, &device)).unwrap();
        let data = sharing_examples();
        let chosen: Vec<&Example> = data.iter().collect();
        // Shared up to the position before the first trained token (21), not into it.
        assert_eq!(shared_prefix(&chosen, 64), 21);
        // A truncation shorter than the opening still leaves every row a position.
        assert_eq!(shared_prefix(&chosen, 20), 18);
        // One example alone, or an opening too short to pay, is not shared.
        assert_eq!(shared_prefix(&chosen[..1], 64), 0);
        let shared = batch_tensors(&chosen, 64, 1.0, &device).unwrap();
        assert_eq!(shared.shared.as_ref().map(|s| s.dims().to_vec()), Some(vec![1, 21]));
        assert_eq!(shared.inputs.dims(), &[3, 46 - 1 - 21]);
        // The same batch, unshared: every row from position 0.
        let longest = 45;
        let flat = |f: &dyn Fn(&Example, usize) -> f32| -> Vec<f32> {
            chosen
                .iter()
                .flat_map(|e| (0..longest).map(move |p| if p + 1 < e.ids.len() { f(e, p) } else { 0.0 }))
                .collect()
        };
        let inputs: Vec<u32> = flat(&|e, p| e.ids[p] as f32).iter().map(|v| *v as u32).collect();
        let targets: Vec<u32> = flat(&|e, p| e.ids[p + 1] as f32).iter().map(|v| *v as u32).collect();
        let mask = flat(&|e, p| f32::from(e.mask[p + 1]));
        let whole = Batch {
            shared: None,
            inputs: Tensor::from_vec(inputs, (3, longest), &device).unwrap(),
            targets: Tensor::from_vec(targets, 3 * longest, &device).unwrap(),
            trained: mask.iter().filter(|m| **m > 0.0).count(),
            mask: Tensor::from_vec(mask, 3 * longest, &device).unwrap(),
        };
        assert_eq!(shared.trained, whole.trained);
        let (a, b) = (batch_loss(&model, &shared).unwrap(), batch_loss(&model, &whole).unwrap());
        let (la, lb) = (a.to_scalar::<f32>().unwrap(), b.to_scalar::<f32>().unwrap());
        assert!((la - lb).abs() < 1e-5, "shared loss {la} vs whole {lb}");
        let (ga, gb) = (a.backward().unwrap(), b.backward().unwrap());
        for (name, var, _) in &ordered_vars(&config, &varmap) {
            let x = ga.get(var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let y = gb.get(var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let worst = x.iter().zip(&y).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
            let scale = y.iter().map(|q| q.abs()).fold(0f32, f32::max);
            assert!(worst <= 1e-4 * scale.max(1.0), "{name}: gradients differ by {worst} (largest {scale})");
        }
    }

    #[test]
    fn tool_name_tokens_weigh_in_the_loss_as_configured() {
        let config = micro_config();
        let device = Device::Cpu;
        let varmap = init_varmap(&config, 7, &device).unwrap();
        let model = Llama::new(config.clone(), VarBuilder::from_varmap(&varmap, DType::F32, &device)).unwrap();
        let ids: Vec<u32> = (0..12).map(|i| (i * 7 + 3) % 32).collect();
        let named = Example { ids: ids.clone(), mask: vec![0, 0, 0, 0, 1, 1, 2, 2, 1, 1, 1, 0] };
        let plain = Example { ids, mask: named.mask.iter().map(|&m| u8::from(m != 0)).collect() };
        // Each trained position's loss alone: a mask with that one position.
        let alone = |position: usize| {
            let mut mask = vec![0u8; 12];
            mask[position] = 1;
            let one = Example { ids: plain.ids.clone(), mask };
            let batch = batch_tensors(&[&one], 64, 1.0, &device).unwrap();
            batch_loss(&model, &batch).unwrap().to_scalar::<f32>().unwrap()
        };
        let losses: Vec<(u8, f32)> =
            named.mask.iter().enumerate().filter(|(_, m)| **m != 0).map(|(p, m)| (*m, alone(p))).collect();
        for weight in [1.0f32, 10.0] {
            let batch = batch_tensors(&[&named], 64, weight, &device).unwrap();
            assert_eq!(batch.trained, 7, "a position counts once whatever its weight");
            let got = batch_loss(&model, &batch).unwrap().to_scalar::<f32>().unwrap();
            let w = |m: u8| if m == cache::TOOL_NAME { weight } else { 1.0 };
            let expected =
                losses.iter().map(|(m, l)| w(*m) * l).sum::<f32>() / losses.iter().map(|(m, _)| w(*m)).sum::<f32>();
            assert!((got - expected).abs() < 1e-5, "weight {weight}: {got} vs {expected}");
        }
        // Weight 1 is the plain loss, and the names move it once weighted.
        let plain_loss = batch_loss(&model, &batch_tensors(&[&plain], 64, 1.0, &device).unwrap()).unwrap();
        let weighted = batch_loss(&model, &batch_tensors(&[&named], 64, 10.0, &device).unwrap()).unwrap();
        let (p, w) = (plain_loss.to_scalar::<f32>().unwrap(), weighted.to_scalar::<f32>().unwrap());
        assert!((p - losses.iter().map(|(_, l)| l).sum::<f32>() / 7.0).abs() < 1e-5);
        assert!((p - w).abs() > 1e-4, "weighting the names changed nothing: {p} vs {w}");
    }

    #[test]
    fn every_parameter_gets_a_gradient_that_matches_finite_differences() {
        let config = micro_config();
        let device = Device::Cpu;
        let varmap = init_varmap(&config, 3, &device).unwrap();
        let model = Llama::new(config.clone(), VarBuilder::from_varmap(&varmap, DType::F32, &device)).unwrap();
        let data = examples();
        let chosen: Vec<&Example> = data.iter().take(3).collect();
        let batch = batch_tensors(&chosen, 64, 1.0, &device).unwrap();
        let loss = batch_loss(&model, &batch).unwrap();
        let grads = loss.backward().unwrap();
        let vars = ordered_vars(&config, &varmap);
        assert_eq!(vars.len(), parameter_shapes(&config).len());
        let eps = 1e-2f32;
        for (name, var, _) in &vars {
            let grad = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{name} got no gradient"));
            let analytic = grad.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(analytic.iter().any(|g| *g != 0.0), "{name}: all-zero gradient");
            // Check the entry with the largest gradient by central differences.
            let (index, expected) = analytic.iter().enumerate().max_by(|a, b| a.1.abs().total_cmp(&b.1.abs())).unwrap();
            let original = var.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let mut shifted = original.clone();
            let eval = |values: &Vec<f32>| -> f32 {
                var.set(&Tensor::from_vec(values.clone(), var.shape(), &device).unwrap()).unwrap();
                batch_loss(&model, &batch).unwrap().to_scalar::<f32>().unwrap()
            };
            shifted[index] = original[index] + eps;
            let up = eval(&shifted);
            shifted[index] = original[index] - eps;
            let down = eval(&shifted);
            eval(&original);
            let numeric = (up - down) / (2.0 * eps);
            let tolerance = 0.05 * expected.abs().max(numeric.abs()) + 1e-3;
            assert!((numeric - expected).abs() <= tolerance, "{name}[{index}]: analytic {expected}, numeric {numeric}");
        }
    }

    struct Recorder {
        losses: Vec<f64>,
    }

    impl TrainHooks for Recorder {
        fn step(&mut self, _step: u64, _total: u64, metrics: &[(&str, f64)]) -> Result<(), TrainError> {
            self.losses.push(metrics[0].1);
            Ok(())
        }
        fn checkpoint(&mut self, _step: u64, _dir: &Path) -> Result<(), TrainError> {
            Ok(())
        }
        fn log(&mut self, _message: &str) {}
    }

    fn write_dataset(dir: &Path) {
        let data = examples();
        cache::write(&mut std::fs::File::create(dir.join("train.tokens")).unwrap(), &data).unwrap();
        cache::write(&mut std::fs::File::create(dir.join("val.tokens")).unwrap(), &data[..2]).unwrap();
        for name in ["tokenizer.json", "chat_template.jinja", "template.json"] {
            std::fs::write(dir.join(name), "{}").unwrap();
        }
    }

    fn weights(dir: &Path) -> Vec<(String, Vec<f32>)> {
        let tensors = candle_core::safetensors::load(dir.join("model/model.safetensors"), &Device::Cpu).unwrap();
        let mut out: Vec<(String, Vec<f32>)> =
            tensors.into_iter().map(|(k, v)| (k, v.flatten_all().unwrap().to_vec1::<f32>().unwrap())).collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    #[test]
    fn loss_falls_and_a_resumed_run_ends_with_the_same_weights() {
        let data_dir = tempfile::tempdir().unwrap();
        write_dataset(data_dir.path());
        let config = SftConfig {
            epochs: 10,
            lr: 1e-2,
            batch_size: 3,
            grad_accum: 2,
            warmup_steps: 2,
            eval_every: 5,
            checkpoint_every: 4,
            seed: 7,
            ..SftConfig::default()
        };
        let whole = tempfile::tempdir().unwrap();
        let mut recorder = Recorder { losses: Vec::new() };
        let summary =
            train(data_dir.path(), &micro_config(), &config, Init::Scratch, whole.path(), None, &mut recorder).unwrap();
        assert_eq!(summary.steps, 20);
        assert!(summary.final_loss < summary.first_loss * 0.7, "{} -> {}", summary.first_loss, summary.final_loss);

        // Stop after 8 steps (as a kill would), then resume from the step-8 checkpoint.
        let split = tempfile::tempdir().unwrap();
        struct StopAt(u64);
        impl TrainHooks for StopAt {
            fn step(&mut self, step: u64, _total: u64, _metrics: &[(&str, f64)]) -> Result<(), TrainError> {
                if step > self.0 {
                    Err(TrainError::Cancelled)
                } else {
                    Ok(())
                }
            }
            fn checkpoint(&mut self, _step: u64, _dir: &Path) -> Result<(), TrainError> {
                Ok(())
            }
            fn log(&mut self, _message: &str) {}
        }
        let interrupted =
            train(data_dir.path(), &micro_config(), &config, Init::Scratch, split.path(), None, &mut StopAt(8));
        assert!(matches!(interrupted, Err(TrainError::Cancelled)));
        let checkpoint = split.path().join("checkpoint-000008");
        assert!(checkpoint.join("optimizer.safetensors").exists());
        train(
            data_dir.path(),
            &micro_config(),
            &config,
            Init::Scratch,
            split.path(),
            Some(&checkpoint),
            &mut Recorder { losses: Vec::new() },
        )
        .unwrap();
        assert_eq!(weights(whole.path()), weights(split.path()), "resumed weights equal uninterrupted weights");
    }

    #[test]
    fn a_non_finite_loss_stops_the_run_naming_the_step() {
        let data_dir = tempfile::tempdir().unwrap();
        write_dataset(data_dir.path());
        // A base whose weights hold a NaN (as a corrupt checkpoint would) poisons the first loss.
        let varmap = init_varmap(&micro_config(), 1, &Device::Cpu).unwrap();
        let mut tensors: std::collections::HashMap<String, Tensor> =
            varmap.data().lock().unwrap().iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect();
        let norm = tensors.get_mut("model.norm.weight").unwrap();
        *norm = Tensor::full(f32::NAN, norm.shape(), &Device::Cpu).unwrap();
        let config = SftConfig { epochs: 2, batch_size: 3, seed: 1, ..SftConfig::default() };
        let run = tempfile::tempdir().unwrap();
        match train(
            data_dir.path(),
            &micro_config(),
            &config,
            Init::Pretrained(tensors),
            run.path(),
            None,
            &mut Recorder { losses: Vec::new() },
        ) {
            Err(error @ TrainError::NotFinite { step: 1, .. }) => {
                assert!(error.to_string().contains("step 1"), "{error}")
            }
            other => panic!("expected the run to stop at step 1, got {:?}", other.map(|s| s.final_loss)),
        }
    }
}
