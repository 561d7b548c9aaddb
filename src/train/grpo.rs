//! GRPO (group relative policy optimisation) from executed episodes. Each step samples a group
//! of episodes per case with the policy being trained (multi-turn, through evaluation's episode
//! runner: the tool calls run in the case's sandbox workspace), scores each with the reward
//! components evaluation shares, turns rewards into group-relative advantages, and takes a
//! clipped policy-gradient step on the model's own tokens only: tool results and prompts are
//! context, never targets. Optional k3 KL to a frozen reference (β > 0). Checkpoints hold the
//! weights, optimizer moments and step; rollouts are seeded by (seed, step, case, sample), so a
//! resumed run samples what an uninterrupted one would.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::optimizer::{accumulate, clip_global_norm, learning_rate, AdamW};
use super::sft::{
    first_failure, load_checkpoint, save_checkpoint, save_model, Init, TrainError, TrainHooks, Trainable,
    TrainedWeights,
};
use crate::eval::episode::{self, Episode, Policy, PolicyReply};
use crate::eval::metrics::{self, CaseScore};
use crate::eval::mined::{mine_group, MinedFrom, Played};
use crate::eval::reward::{reward, Reward, RewardWeights, COMPONENTS};
use crate::eval::suite::EvalCase;
use crate::model::generate::{GenerateOptions, LoadedModel, PromptCache};
use crate::model::llama::{Llama, LlamaConfig, LoraConfig};
use crate::traces::preference::PreferencePair;
use crate::traces::Message;

/// How rewards become advantages: divided by the group's standard deviation (`group`, TRL's
/// default), by the batch's (`batch`), or only centred on the group mean (`none`, Dr. GRPO).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdvantageScale {
    Group,
    Batch,
    None,
}

impl AdvantageScale {
    pub fn parse(text: &str) -> Option<AdvantageScale> {
        match text {
            "group" => Some(AdvantageScale::Group),
            "batch" => Some(AdvantageScale::Batch),
            "none" => Some(AdvantageScale::None),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GrpoConfig {
    /// Optimizer steps (each with fresh rollouts).
    pub steps: u64,
    /// Cases per step; each gets `group_size` episodes.
    pub prompts_per_step: usize,
    pub group_size: usize,
    pub temperature: f64,
    pub top_p: f64,
    /// Replies per rollout episode.
    pub max_turns: usize,
    /// Tokens per reply.
    pub max_tokens: usize,
    pub lr: f64,
    pub warmup_steps: u64,
    pub weight_decay: f64,
    pub max_grad_norm: f64,
    /// Clip range below 1 (and above, unless `epsilon_high` is set).
    pub epsilon: f64,
    pub epsilon_high: Option<f64>,
    /// Policy updates per batch of rollouts (μ); with 1 the ratio is 1 and clipping never binds.
    pub iterations: usize,
    /// Weight of the k3 KL to the reference (the starting model); 0 keeps no reference.
    pub beta: f64,
    pub scale: AdvantageScale,
    pub weights: RewardWeights,
    /// Sequences per forward/backward pass.
    pub micro_batch: usize,
    pub max_seq_len: usize,
    pub checkpoint_every: u64,
    pub seed: u64,
    pub device: String,
    #[serde(default)]
    pub lora: Option<LoraConfig>,
}

impl Default for GrpoConfig {
    fn default() -> Self {
        GrpoConfig {
            steps: 20,
            prompts_per_step: 4,
            group_size: 8,
            temperature: 1.0,
            top_p: 1.0,
            max_turns: 2,
            max_tokens: 96,
            lr: 1e-4,
            warmup_steps: 0,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            epsilon: 0.2,
            epsilon_high: None,
            iterations: 1,
            beta: 0.0,
            scale: AdvantageScale::Group,
            weights: RewardWeights::default(),
            micro_batch: 4,
            max_seq_len: 2048,
            checkpoint_every: 5,
            seed: 0,
            device: "cpu".into(),
            lora: None,
        }
    }
}

impl GrpoConfig {
    pub(super) fn sampling(&self) -> Sampling<'_> {
        Sampling {
            temperature: self.temperature,
            top_p: self.top_p,
            max_turns: self.max_turns,
            max_tokens: self.max_tokens,
            seed: self.seed,
            weights: &self.weights,
        }
    }

    /// Every setting a user can get wrong, named by its flag.
    pub fn validate(&self) -> Result<(), String> {
        let checks = [
            (
                self.group_size >= 2 && self.group_size <= 256,
                "group_size: must be 2 to 256 (advantages compare episodes of a group)",
            ),
            (self.steps >= 1, "steps: at least 1"),
            ((1..=1024).contains(&self.prompts_per_step), "prompts_per_step: must be 1 to 1024"),
            (
                self.temperature > 0.0 && self.temperature <= 5.0,
                "temperature: must be above 0 and at most 5 (GRPO samples)",
            ),
            (self.top_p > 0.0 && self.top_p <= 1.0, "top_p: must be in (0, 1]"),
            ((1..=50).contains(&self.max_turns), "max_turns: must be 1 to 50"),
            ((1..=4096).contains(&self.max_tokens), "max_tokens: must be 1 to 4096"),
            (self.lr > 0.0 && self.lr < 1.0, "lr: must be between 0 and 1"),
            (self.epsilon > 0.0 && self.epsilon < 1.0, "epsilon: must be between 0 and 1"),
            (self.epsilon_high.is_none_or(|e| e > 0.0 && e < 10.0), "epsilon_high: must be between 0 and 10"),
            ((1..=16).contains(&self.iterations), "iterations: must be 1 to 16"),
            (self.beta >= 0.0 && self.beta.is_finite(), "beta: must be a number ≥ 0"),
            ((1..=256).contains(&self.micro_batch), "micro_batch: must be 1 to 256"),
            (self.checkpoint_every >= 1, "checkpoint_every: must be at least 1"),
        ];
        first_failure(&checks, self.lora.as_ref())
    }
}

/// One reply as the model produced it: the prompt it saw and the tokens it sampled (with the
/// end-of-turn token when it stopped). Only `ids[prompt_len..]` is trained.
#[derive(Debug, Clone, PartialEq)]
pub struct Turn {
    pub ids: Vec<u32>,
    pub prompt_len: usize,
}

/// One sampled episode with its score and reward.
#[derive(Debug, Clone)]
pub struct Rollout {
    pub case: usize,
    pub episode: Episode,
    pub turns: Vec<Turn>,
    pub score: CaseScore,
    pub reward: Reward,
}

/// Plays episodes with the policy under training, sampling, and keeps every reply's tokens.
struct Sampler<'m> {
    model: &'m LoadedModel,
    options: GenerateOptions,
    cache: Option<PromptCache>,
    turns: Vec<Turn>,
}

impl Policy for Sampler<'_> {
    fn start_episode(&mut self) {
        // The cache stays: it keeps the longest prefix the next prompt shares with it, so the
        // episodes of one case prefill their common prompt once.
        self.turns.clear();
    }

    fn reply(&mut self, messages: &[Message], tools: &[Value]) -> Result<PolicyReply, String> {
        let options = GenerateOptions {
            seed: self.options.seed.wrapping_add((self.turns.len() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            ..self.options.clone()
        };
        let cache = self.cache.get_or_insert_with(|| self.model.new_cache());
        let generation = self.model.generate_cached(messages, tools, &options, cache).map_err(|e| format!("{e:#}"))?;
        let mut ids = generation.prompt_ids.clone();
        ids.extend(&generation.token_ids);
        ids.extend(generation.stop_token);
        self.turns.push(Turn { ids, prompt_len: generation.prompt_ids.len() });
        Ok(PolicyReply::from(&generation))
    }
}

/// A rollout's seed: the run seed, step, case and sample mixed (splitmix64).
fn rollout_seed(seed: u64, step: u64, case: usize, sample: usize) -> u64 {
    let mut z = seed ^ step.wrapping_mul(0xA24B_AED4_963E_E407) ^ (case as u64).wrapping_mul(0x9FB2_1C65_1E98_DF25);
    z = z.wrapping_add((sample as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// How rollouts sample and are scored: shared by GRPO and PPO.
#[derive(Debug, Clone)]
pub(super) struct Sampling<'w> {
    pub temperature: f64,
    pub top_p: f64,
    pub max_turns: usize,
    pub max_tokens: usize,
    pub seed: u64,
    pub weights: &'w RewardWeights,
}

/// Play `samples` sampled episodes of `case` and score them.
pub(super) fn roll_out(
    model: &LoadedModel,
    case: &EvalCase,
    case_index: usize,
    samples: usize,
    sampling: &Sampling<'_>,
    step: u64,
) -> Vec<Rollout> {
    let budget = sampling.max_turns * sampling.max_tokens;
    // One KV cache for the whole group: every episode starts from the same prompt.
    let mut group_cache: Option<PromptCache> = None;
    (0..samples)
        .map(|sample| {
            let mut sampler = Sampler {
                model,
                options: GenerateOptions {
                    max_tokens: sampling.max_tokens,
                    temperature: sampling.temperature,
                    top_p: sampling.top_p,
                    seed: rollout_seed(sampling.seed, step, case_index, sample),
                    // Rollouts sample the policy's own distribution: the ratios need it.
                    tool_grammar: false,
                },
                cache: group_cache.take(),
                turns: Vec::new(),
            };
            let (played, mut workspace, outputs) = episode::run(&mut sampler, case, sampling.max_turns);
            group_cache = sampler.cache.take();
            let score = metrics::score(case, &played, &mut workspace, &outputs);
            let reward = reward(&score, sampling.weights, budget);
            Rollout { case: case_index, episode: played, turns: std::mem::take(&mut sampler.turns), score, reward }
        })
        .collect()
}

/// The preference pairs a step's groups yield: one per group where an episode succeeded and
/// another failed (see `eval::mined`).
fn mine_pairs(cases: &[EvalCase], rollouts: &[Rollout], group_size: usize, step: u64) -> Vec<PreferencePair> {
    rollouts
        .chunks(group_size.max(1))
        .filter_map(|group| {
            let played: Vec<Played<'_>> =
                group.iter().map(|r| Played { episode: &r.episode, score: &r.score }).collect();
            mine_group(&cases[group[0].case], &played, MinedFrom { origin: "grpo", step })
        })
        .collect()
}

/// The cases step `step` rolls out: `per_step` of them from a seeded shuffle per pass over the
/// suite, so every case comes up once per pass and a resumed run picks what an uninterrupted one
/// would.
pub(super) fn step_cases(cases: usize, per_step: usize, seed: u64, step: u64) -> Vec<usize> {
    let per_pass = (cases / per_step.max(1)).max(1) as u64;
    let pass = step / per_pass;
    let mut order: Vec<usize> = (0..cases).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed ^ pass.wrapping_mul(0x2545_F491_4F6C_DD1D)));
    let offset = ((step % per_pass) as usize) * per_step;
    (0..per_step).map(|i| order[(offset + i) % order.len()]).collect()
}

/// Group-relative advantages for rewards laid out group after group, and how many groups had
/// no variance (every episode scored the same: no signal).
pub fn advantages(rewards: &[f64], group_size: usize, scale: AdvantageScale) -> (Vec<f64>, usize) {
    let std = |values: &[f64]| -> f64 {
        let n = values.len() as f64;
        if values.len() < 2 {
            return 0.0;
        }
        let mean = values.iter().sum::<f64>() / n;
        (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
    };
    let batch_std = std(rewards);
    let mut out = Vec::with_capacity(rewards.len());
    let mut flat = 0;
    for group in rewards.chunks(group_size.max(1)) {
        let mean = group.iter().sum::<f64>() / group.len() as f64;
        let group_std = std(group);
        if group_std < 1e-9 {
            flat += 1;
        }
        let divisor = match scale {
            AdvantageScale::Group => group_std + 1e-4,
            AdvantageScale::Batch => batch_std + 1e-4,
            AdvantageScale::None => 1.0,
        };
        out.extend(group.iter().map(|r| if group_std < 1e-9 { 0.0 } else { (r - mean) / divisor }));
    }
    (out, flat)
}

/// The clipped surrogate summed over tokens (the caller divides by the batch's active tokens):
/// `−min(ρ·A, clip(ρ, 1−ε, 1+ε_high)·A) + β·k3`, with ρ = exp(logp − old), k3 = exp(ref − logp) −
/// (ref − logp) − 1. Returns the loss and how many tokens the clip bound.
pub fn clipped_loss(
    logp: &Tensor,
    old_logp: &Tensor,
    advantages: &Tensor,
    reference: Option<(&Tensor, f64)>,
    epsilon: f64,
    epsilon_high: f64,
) -> candle_core::Result<(Tensor, usize)> {
    let ratio = (logp - old_logp)?.exp()?;
    let unclipped = (&ratio * advantages)?;
    let bounded = ratio.maximum(1.0 - epsilon)?.minimum(1.0 + epsilon_high)?;
    let clipped = (bounded * advantages)?;
    let clipped_count = {
        let (u, c) = (unclipped.to_vec1::<f32>()?, clipped.to_vec1::<f32>()?);
        u.iter().zip(&c).filter(|(u, c)| c < u).count()
    };
    let mut per_token = unclipped.minimum(&clipped)?.neg()?;
    if let Some((reference, beta)) = reference {
        let delta = (reference - logp)?;
        let k3 = ((delta.exp()? - &delta)? - 1.0)?;
        per_token = (per_token + (k3 * beta)?)?;
    }
    Ok((per_token.sum_all()?, clipped_count))
}

/// A batch of turns as model inputs: the opening every turn shares (`shared` positions, run once
/// for the batch; see `sft::shared_opening`), then right-padded ids `(b, t)` after it, the
/// flattened rows whose next token the model sampled (every other row — prompt, tool results,
/// padding — is context only), and those tokens.
pub struct TurnRows {
    pub shared: usize,
    pub inputs: Vec<u32>,
    pub t: usize,
    pub rows: Vec<u32>,
    pub targets: Vec<u32>,
}

pub fn trained_rows(turns: &[&Turn], max_len: usize) -> TurnRows {
    let openings: Vec<(&[u32], usize)> = turns
        .iter()
        .map(|turn| {
            let n = turn.ids.len().min(max_len);
            (&turn.ids[..n], turn.prompt_len.saturating_sub(1).min(n.saturating_sub(1)))
        })
        .collect();
    let shared = super::sft::shared_opening(&openings);
    let longest = turns.iter().map(|turn| turn.ids.len().min(max_len)).max().unwrap_or(2).saturating_sub(1).max(1);
    let t = longest - shared;
    let mut inputs = Vec::with_capacity(turns.len() * t);
    let (mut rows, mut targets) = (Vec::new(), Vec::new());
    for (b, turn) in turns.iter().enumerate() {
        let n = turn.ids.len().min(max_len);
        for position in shared..shared + t {
            inputs.push(if position < n { turn.ids[position] } else { 0 });
            if position + 1 < n && position + 1 >= turn.prompt_len {
                rows.push((b * t + position - shared) as u32);
                targets.push(turn.ids[position + 1]);
            }
        }
    }
    TurnRows { shared, inputs, t, rows, targets }
}

/// The final hidden states of the rows of `turns` whose next token the model sampled, `(n, d)`,
/// and those tokens.
pub(super) fn sampled_rows(
    model: &Llama,
    turns: &[&Turn],
    max_len: usize,
    device: &Device,
) -> candle_core::Result<Option<(Tensor, Tensor)>> {
    let TurnRows { shared, inputs, t, rows, targets } = trained_rows(turns, max_len);
    if rows.is_empty() {
        return Ok(None);
    }
    let b = turns.len();
    let mut cache = match shared {
        0 => None,
        p => Some(model.prefill(&Tensor::from_slice(&turns[0].ids[..p], (1, p), device)?)?),
    };
    let inputs = Tensor::from_vec(inputs, (b, t), device)?;
    let hidden = model.hidden(&inputs, cache.as_mut())?.reshape((b * t, model.config.hidden_size))?;
    let n = rows.len();
    let index = Tensor::from_vec(rows, n, device)?;
    let targets = Tensor::from_vec(targets, n, device)?;
    Ok(Some((hidden.index_select(&index, 0)?, targets)))
}

/// Log-probabilities of `targets` under the logits of `hidden` rows divided by the sampling
/// temperature (as the sampler saw them), and their summed entropy.
pub(super) fn row_logprobs(
    model: &Llama,
    hidden: &Tensor,
    targets: &Tensor,
    temperature: f64,
) -> candle_core::Result<(Tensor, f64)> {
    let mut logits = model.logits(hidden)?;
    if (temperature - 1.0).abs() > 1e-9 {
        logits = (logits / temperature)?;
    }
    let log_probs = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let picked = log_probs.gather(&targets.unsqueeze(1)?.contiguous()?, 1)?.squeeze(1)?;
    let detached = log_probs.detach();
    let entropy = (detached.exp()? * &detached)?.sum_all()?.neg()?.to_scalar::<f32>()? as f64;
    Ok((picked, entropy))
}

/// Log-probabilities of the sampled tokens of `turns` (one per trained row, in order) and their
/// summed entropy.
pub(super) fn token_logprobs(
    model: &Llama,
    turns: &[&Turn],
    max_len: usize,
    temperature: f64,
    device: &Device,
) -> candle_core::Result<Option<(Tensor, f64)>> {
    match sampled_rows(model, turns, max_len, device)? {
        Some((hidden, targets)) => row_logprobs(model, &hidden, &targets, temperature).map(Some),
        None => Ok(None),
    }
}

/// How many tokens of `turn` are trained (what the model sampled, within `max_len`).
pub(super) fn sampled_len(turn: &Turn, max_len: usize) -> usize {
    turn.ids.len().min(max_len).saturating_sub(turn.prompt_len)
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GrpoState {
    pub step: u64,
    pub total_steps: u64,
    pub first_reward: Option<f64>,
    pub last_reward: Option<f64>,
    pub first_loss: Option<f64>,
    pub last_loss: Option<f64>,
    pub generated_tokens: u64,
    pub rollout_seconds: f64,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
/// What a rollout run (GRPO, PPO) reports when it ends.
pub struct RolloutSummary {
    pub steps: u64,
    pub first_reward: f64,
    pub final_reward: f64,
    pub first_loss: f64,
    pub final_loss: f64,
    /// Sampled tokens per second of rollout time.
    pub rollout_tokens_per_second: f64,
    pub model_dir: PathBuf,
}

/// What the policy starts from: a model directory of ours (config, weights, tokenizer, chat
/// template); its files are copied into the trained model.
pub struct Start {
    pub dir: PathBuf,
    pub config: LlamaConfig,
    pub tensors: std::collections::HashMap<String, Tensor>,
    pub tokenizer: tokenizers::Tokenizer,
    pub template: crate::model::chat_template::ChatTemplate,
}

impl Start {
    /// Load a model directory of ours onto the run's device.
    pub fn load(dir: &Path, device: &str) -> Result<Start, TrainError> {
        let device = crate::model::llama::device_for(device).map_err(TrainError::Config)?;
        let fail =
            |what: &str, e: &dyn std::fmt::Display| TrainError::Config(format!("{}: {what}: {e}", dir.display()));
        let text = std::fs::read_to_string(dir.join("config.json")).map_err(|e| fail("config.json", &e))?;
        let config: LlamaConfig = serde_json::from_str(&text).map_err(|e| fail("config.json", &e))?;
        let tensors = candle_core::safetensors::load(dir.join("model.safetensors"), &device)
            .map_err(|e| fail("model.safetensors", &e))?;
        let (tokenizer, template) = LoadedModel::tokenizer_and_template(dir).map_err(|e| fail("tokenizer", &e))?;
        Ok(Start { dir: dir.to_path_buf(), config, tensors, tokenizer, template })
    }
}

/// What every rollout trainer logs about a step's episodes: the reward's mean and spread overall
/// and per component, validity, first-tool and success rates, response length, rollout tokens/s.
pub(super) fn rollout_metrics(rollouts: &[Rollout], rollout_seconds: f64) -> Vec<(String, f64)> {
    let n = rollouts.len().max(1) as f64;
    let rate = |hit: &dyn Fn(&Rollout) -> bool| rollouts.iter().filter(|r| hit(r)).count() as f64 / n;
    let generated: usize = rollouts.iter().map(|r| r.score.tokens).sum();
    let (reward_mean, reward_std) = mean_std(rollouts.iter().map(|r| r.reward.total));
    let mut metrics: Vec<(String, f64)> = vec![("reward".into(), reward_mean), ("reward_std".into(), reward_std)];
    for component in COMPONENTS {
        let (mean, std) = mean_std(rollouts.iter().map(|r| r.reward.components[component]));
        metrics.push((format!("reward_{component}"), mean));
        metrics.push((format!("reward_{component}_std"), std));
    }
    metrics.extend([
        ("valid_rate".into(), rate(&|r| !r.reward.gated)),
        ("first_tool_rate".into(), rate(&|r| r.score.first_tool == Some(true))),
        ("success_rate".into(), rate(&|r| r.score.success == Some(true))),
        ("response_tokens".into(), generated as f64 / n),
        ("rollout_tokens_per_second".into(), generated as f64 / rollout_seconds.max(1e-9)),
    ]);
    metrics
}

/// Mean and standard deviation.
pub(super) fn mean_std(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let values: Vec<f64> = values.collect();
    if values.is_empty() {
        return (0.0, 0.0);
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    (mean, (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt())
}

/// Train with GRPO on `cases`. `resume` is a checkpoint directory of this run.
pub fn train(
    start: Start,
    cases: &[EvalCase],
    config: &GrpoConfig,
    run_dir: &Path,
    resume: Option<&Path>,
    hooks: &mut dyn TrainHooks,
) -> Result<RolloutSummary, TrainError> {
    config.validate().map_err(TrainError::Config)?;
    if cases.is_empty() {
        return Err(TrainError::Config("suite: GRPO needs cases to roll out (the suite is empty)".into()));
    }
    let device = crate::model::llama::device_for(&config.device).map_err(TrainError::Config)?;
    let reference = if config.beta > 0.0 {
        // The starting model, frozen (for LoRA: the base with the adapters off, the same thing).
        let vb = VarBuilder::from_tensors(start.tensors.clone(), DType::F32, &device);
        Some(Llama::new(start.config.clone(), vb)?)
    } else {
        None
    };
    let Trainable { varmap, model, vars, frozen_base } =
        Trainable::new(&start.config, config.lora.as_ref(), Init::Pretrained(start.tensors), config.seed, &device)?;
    // The policy samples with the very model being trained (its variables are updated in place).
    let policy = LoadedModel::new(model, start.tokenizer, start.template);
    let vars = &vars;
    let mut optimizer = AdamW::new(vars, config.weight_decay)?;
    let total_steps = config.steps;
    let mut state = GrpoState { total_steps, ..GrpoState::default() };
    if let Some(checkpoint) = resume {
        let saved: GrpoState =
            load_checkpoint(checkpoint, &varmap, &[], &mut optimizer, vars, |s: &GrpoState| s.step, hooks)?;
        state = GrpoState { total_steps, ..saved };
    }
    std::fs::create_dir_all(run_dir)?;
    let started = Instant::now();
    let seconds_before = state.seconds;
    let epsilon_high = config.epsilon_high.unwrap_or(config.epsilon);
    let sampling = config.sampling();
    while state.step < total_steps {
        let chosen = step_cases(cases.len(), config.prompts_per_step, config.seed, state.step);

        let rollout_started = Instant::now();
        let rollouts: Vec<Rollout> = chosen
            .iter()
            .flat_map(|&c| roll_out(&policy, &cases[c], c, config.group_size, &sampling, state.step))
            .collect();
        let rollout_seconds = rollout_started.elapsed().as_secs_f64();
        let generated: usize = rollouts.iter().map(|r| r.score.tokens).sum();
        let totals: Vec<f64> = rollouts.iter().map(|r| r.reward.total).collect();
        let (advantage, flat_groups) = advantages(&totals, config.group_size, config.scale);
        let mined = mine_pairs(cases, &rollouts, config.group_size, state.step + 1);
        hooks.mined_pairs(&mined)?;

        // Every reply of every episode with a non-zero advantage is trained on.
        let trained: Vec<(&Turn, f64)> = rollouts
            .iter()
            .zip(&advantage)
            .filter(|(_, a)| a.abs() > 1e-12)
            .flat_map(|(r, a)| r.turns.iter().map(move |turn| (turn, *a)))
            .collect();
        let active_tokens: usize = trained.iter().map(|(turn, _)| sampled_len(turn, config.max_seq_len)).sum();

        // Old log-probs (μ > 1) and the reference's, once per batch and without gradient.
        let chunks: Vec<&[(&Turn, f64)]> = trained.chunks(config.micro_batch).collect();
        let logprobs_of = |model: &Llama, chunk: &[(&Turn, f64)]| -> candle_core::Result<Option<Tensor>> {
            let turns: Vec<&Turn> = chunk.iter().map(|(t, _)| *t).collect();
            Ok(token_logprobs(model, &turns, config.max_seq_len, config.temperature, &device)?
                .map(|(lp, _)| lp.detach()))
        };
        let old: Vec<Option<Tensor>> = if config.iterations > 1 {
            chunks.iter().map(|c| logprobs_of(&policy.model, c)).collect::<candle_core::Result<_>>()?
        } else {
            vec![None; chunks.len()]
        };
        let references: Vec<Option<Tensor>> = match &reference {
            Some(model) => chunks.iter().map(|c| logprobs_of(model, c)).collect::<candle_core::Result<_>>()?,
            None => vec![None; chunks.len()],
        };

        let (mut loss_sum, mut clipped, mut entropy_sum, mut kl_sum, mut grad_norm) = (0.0, 0usize, 0.0, 0.0, 0.0);
        let lr = learning_rate(state.step, total_steps, config.warmup_steps, config.lr, 1.0);
        for iteration in 0..config.iterations {
            if active_tokens == 0 {
                break;
            }
            let mut grads: Vec<Option<Tensor>> = vec![None; vars.len()];
            for (index, chunk) in chunks.iter().enumerate() {
                let turns: Vec<&Turn> = chunk.iter().map(|(t, _)| *t).collect();
                let Some((logp, entropy)) =
                    token_logprobs(&policy.model, &turns, config.max_seq_len, config.temperature, &device)?
                else {
                    continue;
                };
                let per_token: Vec<f32> = chunk
                    .iter()
                    .flat_map(|(turn, a)| std::iter::repeat_n(*a as f32, sampled_len(turn, config.max_seq_len)))
                    .collect();
                let advantages = Tensor::from_vec(per_token, logp.dims1()?, &device)?;
                let old_logp = old[index].clone().unwrap_or_else(|| logp.detach());
                let reference_logp = references[index].as_ref().map(|r| (r, config.beta));
                let (loss, bound) =
                    clipped_loss(&logp, &old_logp, &advantages, reference_logp, config.epsilon, epsilon_high)?;
                let loss = (loss / active_tokens as f64)?;
                let value = loss.to_scalar::<f32>()? as f64;
                if !value.is_finite() {
                    return Err(TrainError::NotFinite { step: state.step + 1, value });
                }
                let store = loss.backward()?;
                accumulate(&mut grads, &store, vars)?;
                if iteration == 0 {
                    loss_sum += value;
                    clipped += bound;
                    entropy_sum += entropy;
                    if let Some((reference, _)) = reference_logp {
                        let delta = (reference - &logp.detach())?;
                        let k3 = ((delta.exp()? - &delta)? - 1.0)?;
                        kl_sum += k3.sum_all()?.to_scalar::<f32>()? as f64;
                    }
                }
            }
            grad_norm = clip_global_norm(&mut grads, config.max_grad_norm)?;
            optimizer.apply(vars, &grads, lr)?;
        }

        state.step += 1;
        let (reward_mean, _) = mean_std(totals.iter().copied());
        state.first_reward.get_or_insert(reward_mean);
        state.last_reward = Some(reward_mean);
        state.first_loss.get_or_insert(loss_sum);
        state.last_loss = Some(loss_sum);
        state.generated_tokens += generated as u64;
        state.rollout_seconds += rollout_seconds;
        state.seconds = seconds_before + started.elapsed().as_secs_f64();
        let tokens = active_tokens.max(1) as f64;
        let mut metrics: Vec<(String, f64)> =
            vec![("loss".into(), loss_sum), ("lr".into(), lr), ("grad_norm".into(), grad_norm)];
        metrics.extend(rollout_metrics(&rollouts, rollout_seconds));
        metrics.extend([
            ("zero_variance_groups".into(), flat_groups as f64),
            ("mined_pairs".into(), mined.len() as f64),
            ("clip_fraction".into(), clipped as f64 / tokens),
            ("entropy".into(), entropy_sum / tokens),
        ]);
        if reference.is_some() {
            metrics.push(("kl".into(), kl_sum / tokens));
        }
        let borrowed: Vec<(&str, f64)> = metrics.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        hooks.step(state.step, total_steps, &borrowed)?;
        if state.step.is_multiple_of(config.checkpoint_every) || state.step == total_steps {
            let dir = save_checkpoint(run_dir, &varmap, &[], &optimizer, vars, state.step, &state)?;
            hooks.checkpoint(state.step, &dir)?;
        }
    }
    let weights = TrainedWeights { varmap: &varmap, vars, frozen_base: frozen_base.as_ref() };
    let model_dir = save_model(run_dir, &weights, config.lora.as_ref(), &start.config, &start.dir)?;
    Ok(RolloutSummary {
        steps: state.step,
        first_reward: state.first_reward.unwrap_or(f64::NAN),
        final_reward: state.last_reward.unwrap_or(f64::NAN),
        first_loss: state.first_loss.unwrap_or(f64::NAN),
        final_loss: state.last_loss.unwrap_or(f64::NAN),
        rollout_tokens_per_second: state.generated_tokens as f64 / state.rollout_seconds.max(1e-9),
        model_dir,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-5
    }

    #[test]
    fn advantages_are_group_relative_and_flat_groups_are_counted() {
        let (a, flat) = advantages(&[1.0, 0.0, 0.5, 0.5, 2.0, 2.0], 2, AdvantageScale::Group);
        // Group 1: mean 0.5, sample std √0.5.
        let s = 0.5f64.sqrt() + 1e-4;
        assert!(close(a[0], 0.5 / s) && close(a[1], -0.5 / s), "{a:?}");
        assert_eq!((a[2], a[3], a[4], a[5]), (0.0, 0.0, 0.0, 0.0));
        assert_eq!(flat, 2);
        let (none, _) = advantages(&[1.0, 0.0], 2, AdvantageScale::None);
        assert_eq!(none, vec![0.5, -0.5]);
    }

    #[test]
    fn the_clipped_loss_matches_a_hand_computed_value_and_clipped_tokens_get_no_gradient() {
        let device = Device::Cpu;
        let logp = candle_core::Var::new(&[-1.0f32, -2.0, -0.5, -0.5], &device).unwrap();
        let old = Tensor::new(&[-1.1f32, -2.0, -0.2, -1.0], &device).unwrap();
        let a = Tensor::new(&[1.0f32, -1.0, 2.0, 1.0], &device).unwrap();
        let reference = Tensor::new(&[-1.0f32, -1.5, -0.5, -0.5], &device).unwrap();
        let (loss, clipped) = clipped_loss(logp.as_tensor(), &old, &a, Some((&reference, 0.1)), 0.2, 0.2).unwrap();
        // ρ = e^0.1, 1, e^-0.3, e^0.5: the last is clipped to 1.2 (A > 0), the third is not
        // (its unclipped term is the smaller). k3 is e^0.5 − 0.5 − 1 on the second token only.
        let expected = -(0.1f64.exp() - 1.0 + 2.0 * (-0.3f64).exp() + 1.2) + 0.1 * (0.5f64.exp() - 1.5);
        assert!(close(loss.to_scalar::<f32>().unwrap() as f64, expected), "{loss} vs {expected}");
        assert_eq!(clipped, 1);
        let grads = loss.backward().unwrap();
        let g = grads.get(logp.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(g[3], 0.0, "a clipped token gets no gradient");
        assert!(close(g[0] as f64, -(0.1f64.exp())), "{g:?}");
        assert!(close(g[2] as f64, -2.0 * (-0.3f64).exp()), "{g:?}");
    }

    #[test]
    fn only_the_sampled_tokens_are_trained_and_tool_results_get_zero_gradient() {
        // Turn 2's prompt holds turn 1's reply and a tool result (ids 7); only what the model
        // sampled after each prompt is a target.
        let first = Turn { ids: vec![1, 2, 3, 4, 5], prompt_len: 3 };
        let second = Turn { ids: vec![1, 2, 3, 4, 5, 7, 7, 7, 8, 9], prompt_len: 8 };
        let TurnRows { shared, inputs, t, rows, targets } = trained_rows(&[&first, &second], 64);
        // Two positions shared, below what pays for a separate pass.
        assert_eq!(shared, 0);
        assert_eq!(t, 9);
        assert_eq!(inputs.len(), 18);
        assert_eq!(targets, vec![4, 5, 8, 9]);
        assert_eq!(rows, vec![2, 3, 9 + 7, 9 + 8]);
        // Through the gather the loss uses, every other position's logits get zero gradient.
        let device = Device::Cpu;
        let logits = candle_core::Var::new(vec![vec![0.5f32; 11]; 18], &device).unwrap();
        let index = Tensor::new(rows.as_slice(), &device).unwrap();
        let picked = candle_nn::ops::log_softmax(&logits.as_tensor().index_select(&index, 0).unwrap(), D::Minus1)
            .unwrap()
            .gather(&Tensor::new(targets.as_slice(), &device).unwrap().unsqueeze(1).unwrap(), 1)
            .unwrap();
        let grads = picked.sum_all().unwrap().backward().unwrap();
        let g = grads.get(logits.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
        for (row, values) in g.iter().enumerate() {
            let trained = rows.contains(&(row as u32));
            assert_eq!(values.iter().any(|v| *v != 0.0), trained, "row {row}");
        }
    }

    #[test]
    fn turns_that_open_alike_run_the_opening_once_with_the_same_log_probs() {
        // Four replies of one case: the same 20-token prompt, then each its own reply; the last
        // is a second turn (its prompt holds a reply and a tool result).
        let device = Device::Cpu;
        let config = LlamaConfig { max_position_embeddings: 64, ..LlamaConfig::tiny(32) };
        let Trainable { model, .. } = Trainable::new(&config, None, Init::Scratch, 4, &device).unwrap();
        let prompt: Vec<u32> = (0..20).map(|i| (i * 7 + 3) % 32).collect();
        let turn = |tail: &[u32], prompt_len: usize| Turn {
            ids: prompt.iter().chain(tail).copied().collect(),
            prompt_len: prompt.len() + prompt_len,
        };
        let turns = [turn(&[5, 6, 7], 0), turn(&[5, 9], 0), turn(&[8, 8, 8, 8], 0), turn(&[5, 6, 7, 30, 30, 2, 4], 5)];
        let refs: Vec<&Turn> = turns.iter().collect();
        assert_eq!(trained_rows(&refs, 64).shared, 19, "shared up to the last prompt position");
        let (together, _) = token_logprobs(&model, &refs, 64, 1.0, &device).unwrap().unwrap();
        // One turn at a time shares nothing.
        let alone: Vec<f32> = refs
            .iter()
            .flat_map(|t| token_logprobs(&model, &[*t], 64, 1.0, &device).unwrap().unwrap().0.to_vec1::<f32>().unwrap())
            .collect();
        let together = together.to_vec1::<f32>().unwrap();
        assert_eq!(together.len(), 3 + 2 + 4 + 2);
        for (a, b) in together.iter().zip(&alone) {
            assert!((a - b).abs() < 1e-4, "{together:?} vs {alone:?}");
        }
    }

    #[test]
    fn grpo_learns_a_toy_task_where_one_prompt_word_picks_the_tool() {
        use rand::Rng;
        // Prompts [1, word] with four words; the reply is one token, and the right "tool" for
        // word w is token 20 + w − 10. Reward 1 for the right tool, 0 otherwise: only GRPO's
        // advantages, clipped loss and optimizer turn that into a policy.
        let device = Device::Cpu;
        let config = LlamaConfig {
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
        };
        let Trainable { model, vars, .. } = Trainable::new(&config, None, Init::Scratch, 3, &device).unwrap();
        let mut optimizer = AdamW::new(&vars, 0.0).unwrap();
        let words = [10u32, 11, 12, 13];
        let right = |word: u32| 20 + word - 10;
        let next_probs = |word: u32| -> Vec<f32> {
            let ids = Tensor::new(&[[1u32, word]], &device).unwrap();
            let hidden = model.hidden(&ids, None).unwrap().reshape((2, 16)).unwrap();
            let logits = model.logits(&hidden.get(1).unwrap().unsqueeze(0).unwrap()).unwrap();
            candle_nn::ops::softmax(&logits, D::Minus1).unwrap().squeeze(0).unwrap().to_vec1().unwrap()
        };
        let accuracy = || -> f64 {
            let hits = words.iter().filter(|&&w| {
                let p = next_probs(w);
                let best = (0..p.len()).max_by(|&a, &b| p[a].total_cmp(&p[b])).unwrap();
                best as u32 == right(w)
            });
            hits.count() as f64 / words.len() as f64
        };
        let before = accuracy();
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let group = 16;
        for _ in 0..150 {
            let (mut turns, mut rewards) = (Vec::new(), Vec::new());
            for &word in &words {
                let p = next_probs(word);
                for _ in 0..group {
                    let mut u: f32 = rng.random();
                    let token = p.iter().position(|&q| {
                        u -= q;
                        u <= 0.0
                    });
                    let token = token.unwrap_or(p.len() - 1) as u32;
                    rewards.push(f64::from(u8::from(token == right(word))));
                    turns.push(Turn { ids: vec![1, word, token], prompt_len: 2 });
                }
            }
            let (advantage, _) = advantages(&rewards, group, AdvantageScale::Group);
            let refs: Vec<&Turn> = turns.iter().collect();
            let (logp, _) = token_logprobs(&model, &refs, 64, 1.0, &device).unwrap().unwrap();
            let a = Tensor::from_vec(advantage.iter().map(|&v| v as f32).collect::<Vec<_>>(), turns.len(), &device)
                .unwrap();
            let (loss, _) = clipped_loss(&logp, &logp.detach(), &a, None, 0.2, 0.2).unwrap();
            let loss = (loss / turns.len() as f64).unwrap();
            let store = loss.backward().unwrap();
            let grads: Vec<Option<Tensor>> = vars.iter().map(|(_, v, _)| store.get(v.as_tensor()).cloned()).collect();
            optimizer.apply(&vars, &grads, 0.005).unwrap();
        }
        let after = accuracy();
        assert!(before <= 0.25, "the untrained policy guesses: {before}");
        assert_eq!(after, 1.0, "GRPO learned the word → tool mapping ({before} before)");
    }

    #[test]
    fn a_group_below_two_is_refused_naming_the_flag() {
        let config = GrpoConfig { group_size: 1, ..GrpoConfig::default() };
        assert!(config.validate().unwrap_err().starts_with("group_size"));
    }
}
