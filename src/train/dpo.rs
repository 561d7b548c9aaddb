//! DPO (direct preference optimisation) on stored preference pairs: each pair's prompt is
//! rendered with the model's own chat template and tools, chosen and rejected completions are
//! scored by their summed token log-probabilities (completion tokens only), and the sigmoid loss
//! −log σ(β·[(π_c − ref_c) − (π_r − ref_r)]) (with optional label smoothing) moves the policy.
//! Reference log-probs come from the starting model, computed once. Logged per step: loss,
//! reward accuracy and margin, chosen and rejected rewards; on held-out pairs: how often the
//! chosen completion is the more likely one per token, before and after.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::grpo::{token_logprobs, Start, Turn};
use super::optimizer::{clip_global_norm, learning_rate, AdamW};
use super::sft::{
    first_failure, load_checkpoint, save_checkpoint, save_model, Init, TrainError, TrainHooks, Trainable,
    TrainedWeights,
};
use crate::model::chat_template::ChatTemplate;
use crate::model::llama::{Llama, LoraConfig};
use crate::traces::preference::PairText;
use crate::traces::wire::{messages_from_wire, WireMessage};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DpoConfig {
    pub epochs: u32,
    pub max_steps: Option<u64>,
    /// Pairs per step.
    pub batch_size: usize,
    pub lr: f64,
    pub warmup_steps: u64,
    pub weight_decay: f64,
    pub max_grad_norm: f64,
    pub beta: f64,
    pub label_smoothing: f64,
    pub max_seq_len: usize,
    pub checkpoint_every: u64,
    pub seed: u64,
    pub device: String,
    #[serde(default)]
    pub lora: Option<LoraConfig>,
}

impl Default for DpoConfig {
    fn default() -> Self {
        DpoConfig {
            epochs: 3,
            max_steps: None,
            batch_size: 4,
            lr: 5e-5,
            warmup_steps: 0,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            beta: 0.1,
            label_smoothing: 0.0,
            max_seq_len: 2048,
            checkpoint_every: 25,
            seed: 0,
            device: "cpu".into(),
            lora: None,
        }
    }
}

impl DpoConfig {
    pub fn validate(&self) -> Result<(), String> {
        let checks = [
            (self.beta > 0.0 && self.beta.is_finite(), "beta: must be a number above 0 (DPO's default is 0.1)"),
            ((0.0..0.5).contains(&self.label_smoothing), "label_smoothing: must be 0 to 0.5"),
            (self.lr > 0.0 && self.lr < 1.0, "lr: must be between 0 and 1"),
            ((1..=1024).contains(&self.batch_size), "batch_size: must be 1 to 1024"),
            (self.epochs >= 1 || self.max_steps.is_some(), "epochs: at least one epoch (or --max-steps)"),
            (self.checkpoint_every >= 1, "checkpoint_every: must be at least 1"),
        ];
        first_failure(&checks, self.lora.as_ref())
    }
}

/// A pair as token sequences: chosen and rejected share the prompt; only completions train.
#[derive(Debug, Clone, PartialEq)]
pub struct PairTokens {
    pub chosen: Turn,
    pub rejected: Turn,
}

/// Parse one `dpo.jsonl` line (`prompt`, `chosen`, `rejected`, optional `tools`: strings or
/// message lists) and tokenize it with the model's template: the prompt with the generation
/// prompt, then each completion as the model would write it.
pub fn tokenize_pair(
    tokenizer: &tokenizers::Tokenizer,
    template: &ChatTemplate,
    line: &str,
) -> Result<PairTokens, String> {
    let value: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let text = |field: &str| -> Result<PairText, String> {
        match &value[field] {
            Value::String(s) => Ok(PairText::Text(s.clone())),
            Value::Array(_) => {
                let wire: Vec<WireMessage> =
                    serde_json::from_value(value[field].clone()).map_err(|e| format!("{field}: {e}"))?;
                messages_from_wire(wire).map(PairText::Messages).map_err(|e| format!("{field}: {e}"))
            }
            _ => Err(format!("{field}: expected a string or a list of messages")),
        }
    };
    let tools: Vec<Value> = value["tools"].as_array().cloned().unwrap_or_default();
    let prompt = text("prompt")?.prompt_messages();
    let prompt_text = template.render(&prompt, &tools, true).map_err(|e| e.to_string())?;
    let encode = |s: &str| -> Result<Vec<u32>, String> {
        Ok(tokenizer.encode(s, false).map_err(|e| e.to_string())?.get_ids().to_vec())
    };
    let prompt_ids = encode(&prompt_text)?;
    let completion = |field: &str| -> Result<Turn, String> {
        let mut messages = prompt.clone();
        messages.extend(text(field)?.completion_messages());
        let full = template.render(&messages, &tools, false).map_err(|e| e.to_string())?;
        // The completion is what follows the prompt as the model sees it at generation time.
        let rest = full.strip_prefix(prompt_text.as_str()).ok_or_else(|| {
            format!("{field}: the template does not render the prompt as a prefix of the conversation")
        })?;
        let mut ids = prompt_ids.clone();
        ids.extend(encode(rest)?);
        if ids.len() == prompt_ids.len() {
            return Err(format!("{field}: the completion is empty"));
        }
        Ok(Turn { ids, prompt_len: prompt_ids.len() })
    };
    Ok(PairTokens { chosen: completion("chosen")?, rejected: completion("rejected")? })
}

/// Summed completion log-probs of each sequence, differentiable.
fn sequence_logprobs(model: &Llama, turns: &[&Turn], max_len: usize, device: &Device) -> candle_core::Result<Tensor> {
    let Some((per_token, _)) = token_logprobs(model, turns, max_len, 1.0, device)? else {
        return Tensor::zeros(turns.len(), candle_core::DType::F32, device);
    };
    // A (sequences × tokens) 0/1 matrix sums each sequence's tokens in one differentiable matmul.
    let counts: Vec<usize> =
        turns.iter().map(|t| t.ids.len().min(max_len).saturating_sub(t.prompt_len.max(1))).collect();
    let total: usize = counts.iter().sum();
    let mut segments = vec![0f32; turns.len() * total];
    let mut at = 0;
    for (row, count) in counts.iter().enumerate() {
        for column in at..at + count {
            segments[row * total + column] = 1.0;
        }
        at += count;
    }
    let segments = Tensor::from_vec(segments, (turns.len(), total), device)?;
    segments.matmul(&per_token.unsqueeze(1)?)?.squeeze(1)
}

/// The sigmoid DPO loss (mean over pairs) with label smoothing ε:
/// −(1−ε)·log σ(β·h) − ε·log σ(−β·h), h = (π_c − ref_c) − (π_r − ref_r). Also returns the reward
/// accuracy (chosen reward above rejected) and the mean reward margin β·h.
pub fn dpo_loss(
    policy_chosen: &Tensor,
    policy_rejected: &Tensor,
    reference_chosen: &Tensor,
    reference_rejected: &Tensor,
    beta: f64,
    label_smoothing: f64,
) -> candle_core::Result<(Tensor, f64, f64)> {
    let h = ((policy_chosen - reference_chosen)? - (policy_rejected - reference_rejected)?)?;
    let z = (h * beta)?;
    // log σ(z) = min(z, 0) − log(1 + e^−|z|), stable for any z.
    let log_sigmoid =
        |z: &Tensor| -> candle_core::Result<Tensor> { z.minimum(0.0)? - (z.abs()?.neg()?.exp()? + 1.0)?.log()? };
    let loss = ((log_sigmoid(&z)? * (1.0 - label_smoothing))? + (log_sigmoid(&z.neg()?)? * label_smoothing)?)?
        .neg()?
        .mean_all()?;
    let margins = z.to_vec1::<f32>()?;
    let n = margins.len().max(1) as f64;
    let accuracy = margins.iter().filter(|m| **m > 0.0).count() as f64 / n;
    let margin = margins.iter().map(|m| *m as f64).sum::<f64>() / n;
    Ok((loss, accuracy, margin))
}

/// How often the chosen completion is more likely per token than the rejected one.
fn preference_accuracy(
    model: &Llama,
    pairs: &[PairTokens],
    max_len: usize,
    device: &Device,
) -> candle_core::Result<f64> {
    if pairs.is_empty() {
        return Ok(f64::NAN);
    }
    let mut hits = 0;
    for chunk in pairs.chunks(4) {
        let chosen: Vec<&Turn> = chunk.iter().map(|p| &p.chosen).collect();
        let rejected: Vec<&Turn> = chunk.iter().map(|p| &p.rejected).collect();
        let c = sequence_logprobs(model, &chosen, max_len, device)?.to_vec1::<f32>()?;
        let r = sequence_logprobs(model, &rejected, max_len, device)?.to_vec1::<f32>()?;
        let per_token =
            |total: f32, turn: &Turn| total as f64 / turn.ids.len().saturating_sub(turn.prompt_len).max(1) as f64;
        hits += chunk
            .iter()
            .enumerate()
            .filter(|(i, p)| per_token(c[*i], &p.chosen) > per_token(r[*i], &p.rejected))
            .count();
    }
    Ok(hits as f64 / pairs.len() as f64)
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DpoState {
    pub step: u64,
    pub total_steps: u64,
    pub first_loss: Option<f64>,
    pub last_loss: Option<f64>,
    pub heldout_before: Option<f64>,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DpoSummary {
    pub steps: u64,
    pub first_loss: f64,
    pub final_loss: f64,
    /// Held-out pairs whose chosen completion is the more likely one per token, before and after
    /// (NaN without held-out pairs).
    pub heldout_accuracy_before: f64,
    pub heldout_accuracy_after: f64,
    pub model_dir: PathBuf,
}

/// Train with DPO on tokenized pairs. `resume` is a checkpoint directory of this run.
pub fn train(
    start: Start,
    train_pairs: &[PairTokens],
    heldout_pairs: &[PairTokens],
    config: &DpoConfig,
    run_dir: &Path,
    resume: Option<&Path>,
    hooks: &mut dyn TrainHooks,
) -> Result<DpoSummary, TrainError> {
    config.validate().map_err(TrainError::Config)?;
    if train_pairs.is_empty() {
        return Err(TrainError::Config(
            "dataset: it holds no training preference pairs (import pairs, then build-dataset)".into(),
        ));
    }
    let device = crate::model::llama::device_for(&config.device).map_err(TrainError::Config)?;
    let Trainable { varmap, model, vars, frozen_base } =
        Trainable::new(&start.config, config.lora.as_ref(), Init::Pretrained(start.tensors), config.seed, &device)?;
    // Reference log-probs: the starting model's, computed once (before any update, or read back).
    let reference_path = run_dir.join("reference_logprobs.json");
    std::fs::create_dir_all(run_dir)?;
    let reference: Vec<(f32, f32)> =
        match std::fs::read_to_string(&reference_path).ok().and_then(|t| serde_json::from_str(&t).ok()) {
            Some(saved) if resume.is_some() => saved,
            _ => {
                let mut values = Vec::with_capacity(train_pairs.len());
                for chunk in train_pairs.chunks(config.batch_size) {
                    let chosen: Vec<&Turn> = chunk.iter().map(|p| &p.chosen).collect();
                    let rejected: Vec<&Turn> = chunk.iter().map(|p| &p.rejected).collect();
                    let c = sequence_logprobs(&model, &chosen, config.max_seq_len, &device)?.to_vec1::<f32>()?;
                    let r = sequence_logprobs(&model, &rejected, config.max_seq_len, &device)?.to_vec1::<f32>()?;
                    values.extend(c.into_iter().zip(r));
                }
                std::fs::write(&reference_path, serde_json::to_string(&values).expect("floats serialise"))?;
                values
            }
        };
    let mut optimizer = AdamW::new(&vars, config.weight_decay)?;
    let steps_per_epoch = train_pairs.len().div_ceil(config.batch_size) as u64;
    let total_steps =
        config.max_steps.unwrap_or(u64::MAX).min(steps_per_epoch * u64::from(config.epochs.max(1))).max(1);
    let mut state = DpoState { total_steps, ..DpoState::default() };
    if let Some(checkpoint) = resume {
        let saved: DpoState =
            load_checkpoint(checkpoint, &varmap, &[], &mut optimizer, &vars, |s: &DpoState| s.step, hooks)?;
        state = DpoState { total_steps, ..saved };
    } else {
        state.heldout_before = Some(preference_accuracy(&model, heldout_pairs, config.max_seq_len, &device)?);
    }
    let started = Instant::now();
    let seconds_before = state.seconds;
    while state.step < total_steps {
        let epoch = state.step / steps_per_epoch;
        let mut order: Vec<usize> = (0..train_pairs.len()).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(config.seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15)));
        let from = ((state.step % steps_per_epoch) as usize) * config.batch_size;
        let chosen_pairs: Vec<usize> = order.iter().skip(from).take(config.batch_size).copied().collect();
        let chosen: Vec<&Turn> = chosen_pairs.iter().map(|&i| &train_pairs[i].chosen).collect();
        let rejected: Vec<&Turn> = chosen_pairs.iter().map(|&i| &train_pairs[i].rejected).collect();
        let policy_chosen = sequence_logprobs(&model, &chosen, config.max_seq_len, &device)?;
        let policy_rejected = sequence_logprobs(&model, &rejected, config.max_seq_len, &device)?;
        let reference_chosen =
            Tensor::from_vec(chosen_pairs.iter().map(|&i| reference[i].0).collect::<Vec<_>>(), chosen.len(), &device)?;
        let reference_rejected =
            Tensor::from_vec(chosen_pairs.iter().map(|&i| reference[i].1).collect::<Vec<_>>(), chosen.len(), &device)?;
        let (loss, accuracy, margin) = dpo_loss(
            &policy_chosen,
            &policy_rejected,
            &reference_chosen,
            &reference_rejected,
            config.beta,
            config.label_smoothing,
        )?;
        let value = loss.to_scalar::<f32>()? as f64;
        if !value.is_finite() {
            return Err(TrainError::NotFinite { step: state.step + 1, value });
        }
        let store = loss.backward()?;
        let mut grads: Vec<Option<Tensor>> =
            vars.iter().map(|(_, var, _)| store.get(var.as_tensor()).cloned()).collect();
        let grad_norm = clip_global_norm(&mut grads, config.max_grad_norm)?;
        let lr = learning_rate(state.step, total_steps, config.warmup_steps, config.lr, 0.1);
        optimizer.apply(&vars, &grads, lr)?;
        state.step += 1;
        state.first_loss.get_or_insert(value);
        state.last_loss = Some(value);
        state.seconds = seconds_before + started.elapsed().as_secs_f64();
        let rewards = |policy: &Tensor, reference: &Tensor| -> candle_core::Result<f64> {
            Ok(((policy.detach() - reference)? * config.beta)?.mean_all()?.to_scalar::<f32>()? as f64)
        };
        let mut metrics = vec![
            ("loss", value),
            ("lr", lr),
            ("grad_norm", grad_norm),
            ("reward_accuracy", accuracy),
            ("reward_margin", margin),
            ("reward_chosen", rewards(&policy_chosen, &reference_chosen)?),
            ("reward_rejected", rewards(&policy_rejected, &reference_rejected)?),
        ];
        if state.step == total_steps && !heldout_pairs.is_empty() {
            metrics
                .push(("heldout_accuracy", preference_accuracy(&model, heldout_pairs, config.max_seq_len, &device)?));
        }
        hooks.step(state.step, total_steps, &metrics)?;
        if state.step.is_multiple_of(config.checkpoint_every) || state.step == total_steps {
            let dir = save_checkpoint(run_dir, &varmap, &[], &optimizer, &vars, state.step, &state)?;
            hooks.checkpoint(state.step, &dir)?;
        }
    }
    let heldout_after = preference_accuracy(&model, heldout_pairs, config.max_seq_len, &device)?;
    let weights = TrainedWeights { varmap: &varmap, vars: &vars, frozen_base: frozen_base.as_ref() };
    let model_dir = save_model(run_dir, &weights, config.lora.as_ref(), &start.config, &start.dir)?;
    Ok(DpoSummary {
        steps: state.step,
        first_loss: state.first_loss.unwrap_or(f64::NAN),
        final_loss: state.last_loss.unwrap_or(f64::NAN),
        heldout_accuracy_before: state.heldout_before.unwrap_or(f64::NAN),
        heldout_accuracy_after: heldout_after,
        model_dir,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dpo_loss_matches_a_hand_computed_value() {
        let device = Device::Cpu;
        let t = |v: &[f32]| Tensor::new(v, &device).unwrap();
        let (pc, pr, rc, rr) = (t(&[-5.0, -3.0]), t(&[-6.0, -2.0]), t(&[-5.5, -3.0]), t(&[-5.5, -2.5]));
        // h = (0.5) − (−0.5) = 1 and (0) − (0.5) = −0.5; β = 0.1.
        let (loss, accuracy, margin) = dpo_loss(&pc, &pr, &rc, &rr, 0.1, 0.0).unwrap();
        let log_sigmoid = |z: f64| -(1.0 + (-z).exp()).ln();
        let expected = -(log_sigmoid(0.1) + log_sigmoid(-0.05)) / 2.0;
        assert!((loss.to_scalar::<f32>().unwrap() as f64 - expected).abs() < 1e-6);
        assert_eq!(accuracy, 0.5);
        assert!((margin - 0.025).abs() < 1e-6);
        // Label smoothing mixes in the flipped label.
        let (smoothed, _, _) = dpo_loss(&pc, &pr, &rc, &rr, 0.1, 0.2).unwrap();
        let expected =
            -(0.8 * (log_sigmoid(0.1) + log_sigmoid(-0.05)) + 0.2 * (log_sigmoid(-0.1) + log_sigmoid(0.05))) / 2.0;
        assert!((smoothed.to_scalar::<f32>().unwrap() as f64 - expected).abs() < 1e-6);
        // Large margins stay finite.
        let (far, _, _) = dpo_loss(&t(&[0.0]), &t(&[-4000.0]), &t(&[0.0]), &t(&[0.0]), 1.0, 0.0).unwrap();
        assert!(far.to_scalar::<f32>().unwrap().is_finite());
    }

    #[test]
    fn a_beta_of_zero_is_refused_naming_the_flag() {
        assert!(DpoConfig { beta: 0.0, ..DpoConfig::default() }.validate().unwrap_err().starts_with("beta"));
    }
}
