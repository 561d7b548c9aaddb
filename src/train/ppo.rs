//! PPO (the seed's phase 2) from executed episodes: a value head (linear hidden → 1) on the
//! policy's final hidden states, a per-token KL penalty to the frozen starting model (a fixed
//! coefficient or Ziegler's adaptive controller), the episode's reward on its last sampled token,
//! GAE over the model's own tokens of the whole episode (tool results are context, never actions),
//! whitened advantages, clipped policy and value losses, mini-batches and PPO epochs. Rollouts go
//! through evaluation's episode runner exactly as GRPO's do (one episode per case); checkpoints
//! hold the policy, the value head, both optimizers' moments, the step and the KL coefficient, so
//! a resumed run ends where an uninterrupted one does.

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::grpo::{
    clipped_loss, mean_std, roll_out, rollout_metrics, row_logprobs, sampled_len, sampled_rows, step_cases,
    token_logprobs, Rollout, RolloutSummary, Sampling, Start, Turn,
};
use super::optimizer::{accumulate, clip_global_norm, learning_rate, AdamW};
use super::sft::{
    first_failure, load_checkpoint, save_checkpoint, save_model, Init, TrainError, TrainHooks, Trainable,
    TrainedWeights,
};
use crate::eval::reward::RewardWeights;
use crate::eval::suite::EvalCase;
use crate::model::generate::LoadedModel;
use crate::model::llama::{Llama, LoraConfig};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PpoConfig {
    /// Episodes rolled out over the whole run (the seed's `--episodes`).
    pub episodes: u64,
    /// Episodes per PPO step (one per case).
    pub episodes_per_step: usize,
    pub temperature: f64,
    pub top_p: f64,
    pub max_turns: usize,
    pub max_tokens: usize,
    pub lr: f64,
    pub warmup_steps: u64,
    pub weight_decay: f64,
    pub max_grad_norm: f64,
    /// Policy ratio clip range.
    pub epsilon: f64,
    /// Value clip range around the rollout's values.
    pub value_clip: f64,
    /// Weight of the value loss beside the policy loss.
    pub vf_coef: f64,
    pub gamma: f64,
    pub lam: f64,
    /// Passes over each batch of rollouts.
    pub ppo_epochs: usize,
    /// Optimizer steps per pass (the batch's episodes split evenly).
    pub mini_batches: usize,
    /// The per-token KL penalty's coefficient (the adaptive controller's start).
    pub kl_coef: f64,
    /// With a target (nats per episode), the coefficient adapts (Ziegler et al. 2019).
    pub kl_target: Option<f64>,
    pub kl_horizon: f64,
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

impl Default for PpoConfig {
    fn default() -> Self {
        PpoConfig {
            episodes: 160,
            episodes_per_step: 16,
            temperature: 1.0,
            top_p: 1.0,
            max_turns: 2,
            max_tokens: 96,
            lr: 5e-5,
            warmup_steps: 0,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            epsilon: 0.2,
            value_clip: 0.2,
            vf_coef: 0.1,
            gamma: 1.0,
            lam: 0.95,
            ppo_epochs: 4,
            mini_batches: 1,
            kl_coef: 0.05,
            kl_target: None,
            kl_horizon: 10_000.0,
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

impl PpoConfig {
    /// Every setting a user can get wrong, named by its flag.
    pub fn validate(&self) -> Result<(), String> {
        let unit = |v: f64| (0.0..=1.0).contains(&v);
        let checks = [
            (self.episodes >= 1, "episodes: at least 1"),
            ((1..=1024).contains(&self.episodes_per_step), "episodes_per_step: must be 1 to 1024"),
            (
                self.temperature > 0.0 && self.temperature <= 5.0,
                "temperature: must be above 0 and at most 5 (PPO samples)",
            ),
            (self.top_p > 0.0 && self.top_p <= 1.0, "top_p: must be in (0, 1]"),
            ((1..=50).contains(&self.max_turns), "max_turns: must be 1 to 50"),
            ((1..=4096).contains(&self.max_tokens), "max_tokens: must be 1 to 4096"),
            (self.lr > 0.0 && self.lr < 1.0, "lr: must be between 0 and 1"),
            (self.epsilon > 0.0 && self.epsilon < 1.0, "epsilon: must be between 0 and 1"),
            (self.value_clip > 0.0 && self.value_clip.is_finite(), "value_clip: must be a number above 0"),
            (self.vf_coef >= 0.0 && self.vf_coef.is_finite(), "vf_coef: must be a number ≥ 0"),
            (unit(self.gamma), "gamma: must be in [0, 1]"),
            (unit(self.lam), "lam: must be in [0, 1]"),
            ((1..=16).contains(&self.ppo_epochs), "ppo_epochs: must be 1 to 16"),
            (
                self.mini_batches >= 1 && self.mini_batches <= self.episodes_per_step,
                "mini_batches: must be 1 to the episodes per step",
            ),
            (self.kl_coef >= 0.0 && self.kl_coef.is_finite(), "kl_coef: must be a number ≥ 0"),
            (self.kl_target.is_none_or(|t| t > 0.0 && t.is_finite()), "kl_target: must be a number above 0"),
            (self.kl_horizon >= 1.0 && self.kl_horizon.is_finite(), "kl_horizon: must be at least 1"),
            ((1..=256).contains(&self.micro_batch), "micro_batch: must be 1 to 256"),
            (self.checkpoint_every >= 1, "checkpoint_every: must be at least 1"),
        ];
        first_failure(&checks, self.lora.as_ref())
    }

    /// Optimizer rounds: the episodes in batches of `episodes_per_step` (the last may be short).
    pub fn steps(&self) -> u64 {
        self.episodes.div_ceil(self.episodes_per_step.max(1) as u64)
    }

    fn sampling(&self) -> Sampling<'_> {
        Sampling {
            temperature: self.temperature,
            top_p: self.top_p,
            max_turns: self.max_turns,
            max_tokens: self.max_tokens,
            seed: self.seed,
            weights: &self.weights,
        }
    }
}

/// Generalised advantage estimation over one episode's tokens: δ_t = r_t + γ·V_{t+1} − V_t (the
/// value after the last token is 0), A_t = δ_t + γλ·A_{t+1}; returns are A + V.
pub fn gae(rewards: &[f64], values: &[f64], gamma: f64, lam: f64) -> (Vec<f64>, Vec<f64>) {
    let n = rewards.len();
    let mut advantages = vec![0.0; n];
    let mut running = 0.0;
    for t in (0..n).rev() {
        let next = if t + 1 < n { values[t + 1] } else { 0.0 };
        let delta = rewards[t] + gamma * next - values[t];
        running = delta + gamma * lam * running;
        advantages[t] = running;
    }
    let returns = advantages.iter().zip(values).map(|(a, v)| a + v).collect();
    (advantages, returns)
}

/// Shift to mean 0 and scale to variance 1 (unchanged when there is nothing to scale).
pub fn whiten(values: &mut [f64]) {
    if values.len() < 2 {
        return;
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    let scale = (var + 1e-8).sqrt();
    for v in values.iter_mut() {
        *v = (*v - mean) / scale;
    }
}

/// Ziegler et al.'s adaptive KL coefficient: moves towards `target` by at most 20 % of the error
/// per `horizon` episodes.
pub fn adapt_kl(coef: f64, kl: f64, target: f64, horizon: f64, episodes: usize) -> f64 {
    let error = (kl / target - 1.0).clamp(-0.2, 0.2);
    coef * (1.0 + error * episodes as f64 / horizon)
}

/// The summed losses of one batch of tokens (the caller divides by the tokens).
pub struct PpoTerms {
    /// −min(ρ·A, clip(ρ, 1−ε, 1+ε)·A).
    pub policy: Tensor,
    /// ½·max((V − R)², (V_old + clip(V − V_old, ±c) − R)²).
    pub value: Tensor,
    pub clipped: usize,
    pub value_clipped: usize,
}

#[allow(clippy::too_many_arguments)]
pub fn ppo_loss(
    logp: &Tensor,
    old_logp: &Tensor,
    advantages: &Tensor,
    values: &Tensor,
    old_values: &Tensor,
    returns: &Tensor,
    epsilon: f64,
    value_clip: f64,
) -> candle_core::Result<PpoTerms> {
    let (policy, clipped) = clipped_loss(logp, old_logp, advantages, None, epsilon, epsilon)?;
    let moved = (values - old_values)?.clamp(-value_clip, value_clip)?;
    let bounded = (old_values + moved)?;
    let plain = (values - returns)?.sqr()?;
    let clipped_error = (bounded - returns)?.sqr()?;
    let value_clipped = {
        let (p, c) = (plain.to_vec1::<f32>()?, clipped_error.to_vec1::<f32>()?);
        p.iter().zip(&c).filter(|(p, c)| c > p).count()
    };
    let value = (plain.maximum(&clipped_error)?.sum_all()? * 0.5)?;
    Ok(PpoTerms { policy, value, clipped, value_clipped })
}

/// The value head: `hidden · wᵀ + b`, one value per row.
struct ValueHead {
    weight: Tensor,
    bias: Tensor,
}

impl ValueHead {
    fn values(&self, hidden: &Tensor) -> candle_core::Result<Tensor> {
        hidden.matmul(&self.weight.t()?.contiguous()?)?.broadcast_add(&self.bias)?.squeeze(1)
    }
}

/// Per sampled token of one turn: what the rollout's policy gave and what the update aims at.
#[derive(Debug, Clone, Default)]
struct TokenTargets {
    old_logp: Vec<f32>,
    old_values: Vec<f32>,
    reference: Vec<f32>,
    advantages: Vec<f32>,
    returns: Vec<f32>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PpoState {
    pub step: u64,
    pub total_steps: u64,
    pub kl_coef: f64,
    pub first_reward: Option<f64>,
    pub last_reward: Option<f64>,
    pub first_loss: Option<f64>,
    pub last_loss: Option<f64>,
    pub generated_tokens: u64,
    pub rollout_seconds: f64,
    pub seconds: f64,
}

/// Old log-probs, values and reference log-probs of every turn, without gradient.
fn score_turns(
    policy: &Llama,
    head: &ValueHead,
    reference: Option<&Llama>,
    turns: &[&Turn],
    config: &PpoConfig,
    device: &Device,
) -> candle_core::Result<Vec<TokenTargets>> {
    let mut out = Vec::with_capacity(turns.len());
    for chunk in turns.chunks(config.micro_batch) {
        let lengths: Vec<usize> = chunk.iter().map(|t| sampled_len(t, config.max_seq_len)).collect();
        let Some((hidden, targets)) = sampled_rows(policy, chunk, config.max_seq_len, device)? else {
            out.extend(chunk.iter().map(|_| TokenTargets::default()));
            continue;
        };
        let (logp, _) = row_logprobs(policy, &hidden, &targets, config.temperature)?;
        let logp = logp.detach().to_vec1::<f32>()?;
        let values = head.values(&hidden.detach())?.to_vec1::<f32>()?;
        let reference = match reference {
            Some(model) => token_logprobs(model, chunk, config.max_seq_len, config.temperature, device)?
                .map(|(lp, _)| lp.detach().to_vec1::<f32>())
                .transpose()?
                .unwrap_or_default(),
            None => logp.clone(),
        };
        let mut at = 0;
        for n in lengths {
            out.push(TokenTargets {
                old_logp: logp[at..at + n].to_vec(),
                old_values: values[at..at + n].to_vec(),
                reference: reference[at..at + n].to_vec(),
                ..TokenTargets::default()
            });
            at += n;
        }
    }
    Ok(out)
}

/// Train with PPO on `cases`. `resume` is a checkpoint directory of this run.
pub fn train(
    start: Start,
    cases: &[EvalCase],
    config: &PpoConfig,
    run_dir: &Path,
    resume: Option<&Path>,
    hooks: &mut dyn TrainHooks,
) -> Result<RolloutSummary, TrainError> {
    config.validate().map_err(TrainError::Config)?;
    if cases.is_empty() {
        return Err(TrainError::Config("suite: PPO needs cases to roll out (the suite is empty)".into()));
    }
    let device = crate::model::llama::device_for(&config.device).map_err(TrainError::Config)?;
    let penalised = config.kl_coef > 0.0 || config.kl_target.is_some();
    let reference = if penalised {
        // The starting model, frozen (for LoRA: the base with the adapters off, the same thing).
        let vb = VarBuilder::from_tensors(start.tensors.clone(), DType::F32, &device);
        Some(Llama::new(start.config.clone(), vb)?)
    } else {
        None
    };
    let hidden_size = start.config.hidden_size;
    let Trainable { varmap, model, vars, frozen_base } =
        Trainable::new(&start.config, config.lora.as_ref(), Init::Pretrained(start.tensors), config.seed, &device)?;
    let policy = LoadedModel::new(model, start.tokenizer, start.template);

    // The value head starts at zero: every state is worth 0 until the first update.
    let value_map = VarMap::new();
    let vb = VarBuilder::from_varmap(&value_map, DType::F32, &device);
    let head = ValueHead {
        weight: vb.get_with_hints((1, hidden_size), "value_head.weight", candle_nn::Init::Const(0.0))?,
        bias: vb.get_with_hints(1, "value_head.bias", candle_nn::Init::Const(0.0))?,
    };
    let mut all_vars = vars.clone();
    {
        let data = value_map.data().lock().expect("value head lock");
        for (name, is_norm) in [("value_head.weight", false), ("value_head.bias", true)] {
            all_vars.push((name.to_string(), data[name].clone(), is_norm));
        }
    }
    let all_vars = &all_vars;
    let mut optimizer = AdamW::new(all_vars, config.weight_decay)?;
    let total_steps = config.steps();
    let mut state = PpoState { total_steps, kl_coef: config.kl_coef, ..PpoState::default() };
    let extra = [("value_head", &value_map)];
    if let Some(checkpoint) = resume {
        let saved: PpoState =
            load_checkpoint(checkpoint, &varmap, &extra, &mut optimizer, all_vars, |s: &PpoState| s.step, hooks)?;
        state = PpoState { total_steps, ..saved };
    }
    std::fs::create_dir_all(run_dir)?;
    let started = Instant::now();
    let seconds_before = state.seconds;
    let sampling = config.sampling();
    while state.step < total_steps {
        let done = state.step * config.episodes_per_step as u64;
        let count = (config.episodes - done).min(config.episodes_per_step as u64) as usize;
        let chosen = step_cases(cases.len(), config.episodes_per_step, config.seed, state.step);
        let rollout_started = Instant::now();
        let rollouts: Vec<Rollout> =
            chosen[..count].iter().flat_map(|&c| roll_out(&policy, &cases[c], c, 1, &sampling, state.step)).collect();
        let rollout_seconds = rollout_started.elapsed().as_secs_f64();
        let generated: usize = rollouts.iter().map(|r| r.score.tokens).sum();

        // Every turn of every episode, episode by episode.
        let owners: Vec<usize> =
            rollouts.iter().enumerate().flat_map(|(e, r)| std::iter::repeat_n(e, r.turns.len())).collect();
        let turns: Vec<&Turn> = rollouts.iter().flat_map(|r| r.turns.iter()).collect();
        let mut targets = score_turns(&policy.model, &head, reference.as_ref(), &turns, config, &device)?;

        // Rewards per token: −β·(log π − log π_ref), plus the episode's reward on its last token;
        // GAE over the episode's own tokens, turn after turn.
        let (mut kl_tokens, mut kl_episodes) = (0.0, Vec::with_capacity(rollouts.len()));
        for (episode, rollout) in rollouts.iter().enumerate() {
            let mine: Vec<usize> = (0..turns.len()).filter(|&i| owners[i] == episode).collect();
            let old: Vec<f64> = mine.iter().flat_map(|&i| targets[i].old_logp.iter().map(|&v| v as f64)).collect();
            let reference: Vec<f64> =
                mine.iter().flat_map(|&i| targets[i].reference.iter().map(|&v| v as f64)).collect();
            let values: Vec<f64> = mine.iter().flat_map(|&i| targets[i].old_values.iter().map(|&v| v as f64)).collect();
            if old.is_empty() {
                kl_episodes.push(0.0);
                continue;
            }
            let kl: Vec<f64> = old.iter().zip(&reference).map(|(o, r)| o - r).collect();
            kl_tokens += kl.iter().sum::<f64>();
            kl_episodes.push(kl.iter().sum::<f64>());
            let mut rewards: Vec<f64> = kl.iter().map(|k| -state.kl_coef * k).collect();
            *rewards.last_mut().expect("not empty") += rollout.reward.total;
            let (advantages, returns) = gae(&rewards, &values, config.gamma, config.lam);
            let mut at = 0;
            for &i in &mine {
                let n = targets[i].old_logp.len();
                targets[i].advantages = advantages[at..at + n].iter().map(|&v| v as f32).collect();
                targets[i].returns = returns[at..at + n].iter().map(|&v| v as f32).collect();
                at += n;
            }
        }
        let mut flat: Vec<f64> = targets.iter().flat_map(|t| t.advantages.iter().map(|&v| v as f64)).collect();
        whiten(&mut flat);
        let mut at = 0;
        for target in targets.iter_mut() {
            let n = target.advantages.len();
            target.advantages = flat[at..at + n].iter().map(|&v| v as f32).collect();
            at += n;
        }
        let all_tokens = flat.len().max(1) as f64;

        // PPO epochs over seeded mini-batches of episodes.
        let lr = learning_rate(state.step, total_steps, config.warmup_steps, config.lr, 1.0);
        let per_batch = rollouts.len().div_ceil(config.mini_batches).max(1);
        let (mut policy_sum, mut value_sum, mut clipped, mut value_clipped, mut seen) = (0.0, 0.0, 0, 0, 0usize);
        let (mut entropy_sum, mut grad_norm) = (0.0, 0.0);
        for epoch in 0..config.ppo_epochs {
            let mut order: Vec<usize> = (0..rollouts.len()).collect();
            order.shuffle(&mut ChaCha8Rng::seed_from_u64(
                config.seed ^ state.step.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (epoch as u64 + 1).wrapping_mul(0xD1B5),
            ));
            for batch in order.chunks(per_batch) {
                let members: Vec<usize> = (0..turns.len()).filter(|&i| batch.contains(&owners[i])).collect();
                let tokens: usize = members.iter().map(|&i| targets[i].old_logp.len()).sum();
                if tokens == 0 {
                    continue;
                }
                let mut grads: Vec<Option<Tensor>> = vec![None; all_vars.len()];
                for chunk in members.chunks(config.micro_batch) {
                    let chunk_turns: Vec<&Turn> = chunk.iter().map(|&i| turns[i]).collect();
                    let Some((hidden, sampled)) =
                        sampled_rows(&policy.model, &chunk_turns, config.max_seq_len, &device)?
                    else {
                        continue;
                    };
                    let (logp, entropy) = row_logprobs(&policy.model, &hidden, &sampled, config.temperature)?;
                    let values = head.values(&hidden)?;
                    let gather = |pick: &dyn Fn(&TokenTargets) -> &Vec<f32>| -> candle_core::Result<Tensor> {
                        let data: Vec<f32> = chunk.iter().flat_map(|&i| pick(&targets[i]).iter().copied()).collect();
                        let n = data.len();
                        Tensor::from_vec(data, n, &device)
                    };
                    let terms = ppo_loss(
                        &logp,
                        &gather(&|t| &t.old_logp)?,
                        &gather(&|t| &t.advantages)?,
                        &values,
                        &gather(&|t| &t.old_values)?,
                        &gather(&|t| &t.returns)?,
                        config.epsilon,
                        config.value_clip,
                    )?;
                    let loss = ((&terms.policy + (&terms.value * config.vf_coef)?)? / tokens as f64)?;
                    let value = loss.to_scalar::<f32>()? as f64;
                    if !value.is_finite() {
                        return Err(TrainError::NotFinite { step: state.step + 1, value });
                    }
                    let store = loss.backward()?;
                    accumulate(&mut grads, &store, all_vars)?;
                    policy_sum += terms.policy.to_scalar::<f32>()? as f64;
                    value_sum += terms.value.to_scalar::<f32>()? as f64;
                    clipped += terms.clipped;
                    value_clipped += terms.value_clipped;
                    seen += logp.dims1()?;
                    if epoch == 0 {
                        entropy_sum += entropy;
                    }
                }
                grad_norm = clip_global_norm(&mut grads, config.max_grad_norm)?;
                optimizer.apply(all_vars, &grads, lr)?;
            }
        }

        let episodes = rollouts.len();
        let (kl_mean, _) = mean_std(kl_episodes.iter().copied());
        if let Some(target) = config.kl_target {
            state.kl_coef = adapt_kl(state.kl_coef, kl_mean, target, config.kl_horizon, episodes);
        }
        let seen_f = seen.max(1) as f64;
        let loss = (policy_sum + config.vf_coef * value_sum) / seen_f;
        state.step += 1;
        let totals: Vec<f64> = rollouts.iter().map(|r| r.reward.total).collect();
        let (reward_mean, _) = mean_std(totals.iter().copied());
        state.first_reward.get_or_insert(reward_mean);
        state.last_reward = Some(reward_mean);
        state.first_loss.get_or_insert(loss);
        state.last_loss = Some(loss);
        state.generated_tokens += generated as u64;
        state.rollout_seconds += rollout_seconds;
        state.seconds = seconds_before + started.elapsed().as_secs_f64();
        let mut metrics: Vec<(String, f64)> = vec![
            ("loss".into(), loss),
            ("policy_loss".into(), policy_sum / seen_f),
            ("value_loss".into(), value_sum / seen_f),
            ("lr".into(), lr),
            ("grad_norm".into(), grad_norm),
        ];
        metrics.extend(rollout_metrics(&rollouts, rollout_seconds));
        metrics.extend([
            ("kl".into(), kl_tokens / all_tokens),
            ("kl_episode".into(), kl_mean),
            ("kl_coef".into(), state.kl_coef),
            ("clip_fraction".into(), clipped as f64 / seen_f),
            ("value_clip_fraction".into(), value_clipped as f64 / seen_f),
            ("entropy".into(), entropy_sum / all_tokens),
        ]);
        let borrowed: Vec<(&str, f64)> = metrics.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        hooks.step(state.step, total_steps, &borrowed)?;
        if state.step.is_multiple_of(config.checkpoint_every) || state.step == total_steps {
            let dir = save_checkpoint(run_dir, &varmap, &extra, &optimizer, all_vars, state.step, &state)?;
            hooks.checkpoint(state.step, &dir)?;
        }
    }
    let weights = TrainedWeights { varmap: &varmap, vars: &vars, frozen_base: frozen_base.as_ref() };
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
    fn gae_matches_a_hand_computed_episode() {
        // γ = 1, λ = 0.5; rewards only at the end, values 0.5, 0.25, 1.
        let (a, r) = gae(&[0.0, 0.0, 2.0], &[0.5, 0.25, 1.0], 1.0, 0.5);
        // δ = (0.25 − 0.5, 1 − 0.25, 2 − 1) = (−0.25, 0.75, 1).
        let expected = [-0.25 + 0.5 * (0.75 + 0.5), 0.75 + 0.5, 1.0];
        for (got, want) in a.iter().zip(expected) {
            assert!(close(*got, want), "{a:?}");
        }
        assert!(close(r[2], 2.0) && close(r[0], a[0] + 0.5), "{r:?}");
        // λ = 1, γ = 1: every advantage is the return minus the value.
        let (a, _) = gae(&[1.0, 0.0, 3.0], &[0.0, 1.0, 2.0], 1.0, 1.0);
        assert_eq!(a, vec![4.0, 2.0, 1.0]);
    }

    #[test]
    fn the_ppo_loss_matches_a_hand_computed_value() {
        let device = Device::Cpu;
        let logp = candle_core::Var::new(&[-1.0f32, -0.5], &device).unwrap();
        let old = Tensor::new(&[-1.0f32, -1.0], &device).unwrap();
        let advantages = Tensor::new(&[1.0f32, 1.0], &device).unwrap();
        let values = candle_core::Var::new(&[0.5f32, 2.0], &device).unwrap();
        let old_values = Tensor::new(&[0.4f32, 1.0], &device).unwrap();
        let returns = Tensor::new(&[1.0f32, 1.5], &device).unwrap();
        let terms =
            ppo_loss(logp.as_tensor(), &old, &advantages, values.as_tensor(), &old_values, &returns, 0.2, 0.2).unwrap();
        // Policy: ρ = 1 and e^0.5 (clipped to 1.2): −(1 + 1.2).
        assert!(close(terms.policy.to_scalar::<f32>().unwrap() as f64, -2.2));
        assert_eq!(terms.clipped, 1);
        // Value: token 1 moved 0.1 (inside the clip): (0.5 − 1)² = 0.25. Token 2 moved 1.0,
        // clipped to 1.2: max((2 − 1.5)², (1.2 − 1.5)²) = 0.25; ½·(0.25 + 0.25).
        assert!(close(terms.value.to_scalar::<f32>().unwrap() as f64, 0.25), "{}", terms.value);
        assert_eq!(terms.value_clipped, 0);
        let total = (&terms.policy + &terms.value).unwrap();
        let grads = total.backward().unwrap();
        let g = grads.get(values.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        assert!(close(g[0] as f64, -0.5) && close(g[1] as f64, 0.5), "{g:?}");
        let g = grads.get(logp.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        assert!(close(g[0] as f64, -1.0) && g[1] == 0.0, "a clipped ratio gets no gradient: {g:?}");
    }

    #[test]
    fn whitening_and_the_adaptive_kl_controller() {
        let mut v = vec![1.0, 2.0, 3.0];
        whiten(&mut v);
        assert!(close(v[0], -1.0) && close(v[1], 0.0) && close(v[2], 1.0), "{v:?}");
        // Above target the coefficient grows, by at most 20 % of episodes / horizon.
        assert!(close(adapt_kl(0.1, 12.0, 6.0, 100.0, 10), 0.1 * 1.02));
        assert!(close(adapt_kl(0.1, 3.0, 6.0, 100.0, 10), 0.1 * (1.0 - 0.02)));
        assert!(close(adapt_kl(0.1, 6.0, 6.0, 100.0, 10), 0.1));
    }

    #[test]
    fn steps_cover_the_episodes_and_bad_settings_name_their_flag() {
        let config = PpoConfig { episodes: 100, episodes_per_step: 16, ..PpoConfig::default() };
        assert_eq!(config.steps(), 7);
        let bad = PpoConfig { mini_batches: 17, ..config.clone() };
        assert!(bad.validate().unwrap_err().starts_with("mini_batches"));
        let bad = PpoConfig { lam: 1.5, ..config };
        assert!(bad.validate().unwrap_err().starts_with("lam"));
    }
}
