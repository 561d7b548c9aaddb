//! AdamW with decoupled weight decay and state we can checkpoint (candle-nn's keeps its moments
//! private), the warmup + cosine learning-rate schedule, and clipping by global gradient norm.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Result, Tensor, Var};

pub struct AdamW {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Completed steps (bias correction uses step + 1).
    pub step: u64,
    moments: Vec<(Tensor, Tensor)>,
}

impl AdamW {
    pub fn new(vars: &[(String, Var, bool)], weight_decay: f64) -> Result<AdamW> {
        let moments =
            vars.iter().map(|(_, var, _)| Ok((var.zeros_like()?, var.zeros_like()?))).collect::<Result<_>>()?;
        Ok(AdamW { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay, step: 0, moments })
    }

    /// Apply one update; `grads[i]` belongs to `vars[i]` (None: no gradient this step).
    /// Norm weights are not decayed.
    pub fn apply(&mut self, vars: &[(String, Var, bool)], grads: &[Option<Tensor>], lr: f64) -> Result<()> {
        self.step += 1;
        let t = self.step as i32;
        let (c1, c2) = (1.0 - self.beta1.powi(t), 1.0 - self.beta2.powi(t));
        for (((_, var, is_norm), grad), (m, v)) in vars.iter().zip(grads).zip(self.moments.iter_mut()) {
            let Some(grad) = grad else { continue };
            let new_m = ((&*m * self.beta1)? + (grad * (1.0 - self.beta1))?)?;
            let new_v = ((&*v * self.beta2)? + (grad.sqr()? * (1.0 - self.beta2))?)?;
            let update = ((&new_m / c1)? / ((&new_v / c2)?.sqrt()? + self.eps)?)?;
            let decayed =
                if *is_norm { var.as_tensor().clone() } else { (var.as_tensor() * (1.0 - lr * self.weight_decay))? };
            var.set(&(decayed - (update * lr)?)?)?;
            *m = new_m;
            *v = new_v;
        }
        Ok(())
    }

    /// Write the moments and the update count (`adamw.step`: a trainer step may apply no update,
    /// as a GRPO step whose groups all scored alike, or several, as PPO's epochs).
    pub fn save(&self, vars: &[(String, Var, bool)], path: &Path) -> Result<()> {
        let mut tensors = HashMap::new();
        let device = vars.first().map(|(_, v, _)| v.device().clone()).unwrap_or(candle_core::Device::Cpu);
        tensors.insert(STEP_KEY.to_string(), Tensor::new(&[self.step as i64], &device)?);
        for ((name, _, _), (m, v)) in vars.iter().zip(&self.moments) {
            tensors.insert(format!("{name}.m"), m.clone());
            tensors.insert(format!("{name}.v"), v.clone());
        }
        candle_core::safetensors::save(&tensors, path)
    }

    /// Read what `save` wrote. `step` (the trainer's) counts the updates of a checkpoint written
    /// before the count was saved.
    pub fn load(&mut self, vars: &[(String, Var, bool)], path: &Path, step: u64) -> Result<()> {
        let device = vars.first().map(|(_, v, _)| v.device().clone()).unwrap_or(candle_core::Device::Cpu);
        let tensors = candle_core::safetensors::load(path, &device)?;
        for ((name, _, _), (m, v)) in vars.iter().zip(self.moments.iter_mut()) {
            *m = tensors
                .get(&format!("{name}.m"))
                .cloned()
                .ok_or_else(|| candle_core::Error::msg(format!("optimizer state lacks {name}.m")))?;
            *v = tensors
                .get(&format!("{name}.v"))
                .cloned()
                .ok_or_else(|| candle_core::Error::msg(format!("optimizer state lacks {name}.v")))?;
        }
        self.step = match tensors.get(STEP_KEY) {
            Some(saved) => u64::try_from(saved.to_vec1::<i64>()?.first().copied().unwrap_or(0))
                .map_err(|_| candle_core::Error::msg("optimizer state: a negative step"))?,
            None => step,
        };
        Ok(())
    }
}

/// The update count in the optimizer state file (no variable name ends so).
const STEP_KEY: &str = "adamw.step";

/// Linear warmup to `peak`, then cosine decay to `peak * floor` at `total` steps.
pub fn learning_rate(step: u64, total: u64, warmup: u64, peak: f64, floor: f64) -> f64 {
    if warmup > 0 && step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let progress = ((step - warmup.min(step)) as f64 / span).min(1.0);
    let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
    peak * (floor + (1.0 - floor) * cosine)
}

/// Add the gradients `store` holds for `vars` into `grads` (one slot per variable, in order).
pub fn accumulate(
    grads: &mut [Option<Tensor>],
    store: &candle_core::backprop::GradStore,
    vars: &[(String, Var, bool)],
) -> Result<()> {
    for ((_, var, _), slot) in vars.iter().zip(grads.iter_mut()) {
        if let Some(grad) = store.get(var.as_tensor()) {
            *slot = Some(match slot.take() {
                Some(sum) => (sum + grad)?,
                None => grad.clone(),
            });
        }
    }
    Ok(())
}

/// Scale gradients so their global L2 norm is at most `max_norm`; returns the norm before.
pub fn clip_global_norm(grads: &mut [Option<Tensor>], max_norm: f64) -> Result<f64> {
    let sums: Vec<Tensor> = grads.iter().flatten().map(|g| g.sqr()?.sum_all()).collect::<Result<_>>()?;
    if sums.is_empty() {
        return Ok(0.0);
    }
    let norm = Tensor::stack(&sums, 0)?.sum_all()?.to_scalar::<f32>()?.sqrt() as f64;
    if norm.is_finite() && norm > max_norm {
        let scale = max_norm / (norm + 1e-6);
        for grad in grads.iter_mut().flatten() {
            *grad = (&*grad * scale)?;
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A resumed run continues with the update count it had, not the trainer's step count: a
    /// step may apply no update (or several), and Adam's bias correction depends on the count.
    #[test]
    fn a_loaded_optimizer_continues_with_the_saved_update_count() {
        let device = candle_core::Device::Cpu;
        let var = Var::new(&[1.0f32, -2.0], &device).unwrap();
        let vars = vec![("w".to_string(), var.clone(), false)];
        let grads = vec![Some(Tensor::new(&[0.5f32, 0.25], &device).unwrap())];
        let mut optimizer = AdamW::new(&vars, 0.0).unwrap();
        optimizer.apply(&vars, &grads, 0.1).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("optimizer.safetensors");
        optimizer.save(&vars, &path).unwrap();
        // Three trainer steps, one update.
        let mut loaded = AdamW::new(&vars, 0.0).unwrap();
        loaded.load(&vars, &path, 3).unwrap();
        assert_eq!(loaded.step, 1);
        let before = var.as_tensor().to_vec1::<f32>().unwrap();
        optimizer.apply(&vars, &grads, 0.1).unwrap();
        let uninterrupted = var.as_tensor().to_vec1::<f32>().unwrap();
        var.set(&Tensor::new(before.as_slice(), &device).unwrap()).unwrap();
        loaded.apply(&vars, &grads, 0.1).unwrap();
        assert_eq!(var.as_tensor().to_vec1::<f32>().unwrap(), uninterrupted, "bit-identical");
        // A state file without the count (written before it was saved) takes the trainer's.
        let mut tensors = candle_core::safetensors::load(&path, &device).unwrap();
        tensors.remove(STEP_KEY);
        candle_core::safetensors::save(&tensors, &path).unwrap();
        loaded.load(&vars, &path, 3).unwrap();
        assert_eq!(loaded.step, 3);
    }

    #[test]
    fn schedule_warms_up_then_decays() {
        assert!((learning_rate(0, 100, 10, 1.0, 0.1) - 0.1).abs() < 1e-9);
        assert!((learning_rate(9, 100, 10, 1.0, 0.1) - 1.0).abs() < 1e-9);
        assert!((learning_rate(100, 100, 10, 1.0, 0.1) - 0.1).abs() < 1e-9);
        assert!(learning_rate(50, 100, 10, 1.0, 0.1) < 1.0);
    }
}
