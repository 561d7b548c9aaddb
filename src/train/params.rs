//! Creating and naming a model's parameters: Hugging Face names and shapes for a config, and a
//! seeded initialisation (scaled normal weights, unit norms) so a run is reproducible.

use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::VarMap;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::model::llama::LlamaConfig;

/// (name, shape, is a norm weight) for every parameter of a config, in a fixed order.
pub fn parameter_shapes(config: &LlamaConfig) -> Vec<(String, Vec<usize>, bool)> {
    let d = config.hidden_size;
    let head_dim = config.head_dim();
    let (q, kv) = (config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim);
    let mut shapes = vec![("model.embed_tokens.weight".to_string(), vec![config.vocab_size, d], false)];
    for i in 0..config.num_hidden_layers {
        let layer = format!("model.layers.{i}");
        shapes.push((format!("{layer}.input_layernorm.weight"), vec![d], true));
        shapes.push((format!("{layer}.self_attn.q_proj.weight"), vec![q, d], false));
        shapes.push((format!("{layer}.self_attn.k_proj.weight"), vec![kv, d], false));
        shapes.push((format!("{layer}.self_attn.v_proj.weight"), vec![kv, d], false));
        shapes.push((format!("{layer}.self_attn.o_proj.weight"), vec![d, q], false));
        shapes.push((format!("{layer}.post_attention_layernorm.weight"), vec![d], true));
        shapes.push((format!("{layer}.mlp.gate_proj.weight"), vec![config.intermediate_size, d], false));
        shapes.push((format!("{layer}.mlp.up_proj.weight"), vec![config.intermediate_size, d], false));
        shapes.push((format!("{layer}.mlp.down_proj.weight"), vec![d, config.intermediate_size], false));
    }
    shapes.push(("model.norm.weight".to_string(), vec![d], true));
    if !config.tie_word_embeddings {
        shapes.push(("lm_head.weight".to_string(), vec![config.vocab_size, d], false));
    }
    shapes
}

fn normal(rng: &mut ChaCha8Rng, std: f64) -> f32 {
    // Box–Muller: deterministic for a seeded generator, unlike the backend's own RNG.
    let u1: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
    let u2: f64 = rng.random();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos() * std) as f32
}

/// A VarMap holding freshly initialised parameters for `config`.
pub fn init_varmap(config: &LlamaConfig, seed: u64, device: &Device) -> Result<VarMap> {
    let varmap = VarMap::new();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let residual_std = 0.02 / (2.0 * config.num_hidden_layers as f64).sqrt();
    {
        let mut data = varmap.data().lock().expect("varmap lock");
        for (name, shape, is_norm) in parameter_shapes(config) {
            let count: usize = shape.iter().product();
            let values: Vec<f32> = if is_norm {
                vec![1.0; count]
            } else {
                let std = if name.ends_with("o_proj.weight") || name.ends_with("down_proj.weight") {
                    residual_std
                } else {
                    0.02
                };
                (0..count).map(|_| normal(&mut rng, std)).collect()
            };
            let tensor = Tensor::from_vec(values, shape, device)?.to_dtype(DType::F32)?;
            data.insert(name, Var::from_tensor(&tensor)?);
        }
    }
    Ok(varmap)
}

/// The VarMap's variables in `parameter_shapes` order (a stable order for optimizer state).
pub fn ordered_vars(config: &LlamaConfig, varmap: &VarMap) -> Vec<(String, Var, bool)> {
    let data = varmap.data().lock().expect("varmap lock");
    parameter_shapes(config)
        .into_iter()
        .filter_map(|(name, _, is_norm)| data.get(&name).map(|var| (name, var.clone(), is_norm)))
        .collect()
}

use crate::model::llama::LoraConfig;

/// (name, shape) of every LoRA adapter tensor for `lora` on `config`, in a fixed order.
pub fn lora_shapes(config: &LlamaConfig, lora: &LoraConfig) -> Vec<(String, Vec<usize>)> {
    let d = config.hidden_size;
    let head_dim = config.head_dim();
    let (q, kv) = (config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim);
    let dims = |name: &str| -> (usize, usize) {
        match name {
            "q_proj" => (d, q),
            "k_proj" | "v_proj" => (d, kv),
            "o_proj" => (q, d),
            "gate_proj" | "up_proj" => (d, config.intermediate_size),
            _ => (config.intermediate_size, d),
        }
    };
    let mut shapes = Vec::new();
    for i in 0..config.num_hidden_layers {
        for name in LoraConfig::PROJECTIONS.iter().filter(|p| lora.targets.iter().any(|t| t == *p)) {
            let group = if name.ends_with("proj") && ["q_proj", "k_proj", "v_proj", "o_proj"].contains(name) {
                "self_attn"
            } else {
                "mlp"
            };
            let (input, output) = dims(name);
            let prefix = format!("model.layers.{i}.{group}.{name}");
            shapes.push((format!("{prefix}.lora_A.weight"), vec![lora.rank, input]));
            shapes.push((format!("{prefix}.lora_B.weight"), vec![output, lora.rank]));
        }
    }
    shapes
}

/// Fresh adapters: A ~ N(0, 1/in), B = 0, so training starts from the base model exactly.
pub fn init_lora_varmap(config: &LlamaConfig, lora: &LoraConfig, seed: u64, device: &Device) -> Result<VarMap> {
    let varmap = VarMap::new();
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x10_7a);
    {
        let mut data = varmap.data().lock().expect("varmap lock");
        for (name, shape) in lora_shapes(config, lora) {
            let count: usize = shape.iter().product();
            let values: Vec<f32> = if name.ends_with("lora_A.weight") {
                let std = 1.0 / (shape[1] as f64).sqrt();
                (0..count).map(|_| normal(&mut rng, std)).collect()
            } else {
                vec![0.0; count]
            };
            data.insert(name, Var::from_tensor(&Tensor::from_vec(values, shape, device)?)?);
        }
    }
    Ok(varmap)
}

/// A VarMap whose variables start from pretrained tensors (full fine-tuning of a base model).
pub fn varmap_from_tensors(
    config: &LlamaConfig,
    tensors: &std::collections::HashMap<String, Tensor>,
) -> Result<VarMap> {
    let varmap = VarMap::new();
    {
        let mut data = varmap.data().lock().expect("varmap lock");
        for (name, shape, _) in parameter_shapes(config) {
            let tensor = tensors
                .get(&name)
                .ok_or_else(|| candle_core::Error::msg(format!("the base model has no tensor {name}")))?;
            if tensor.dims() != shape.as_slice() {
                return Err(candle_core::Error::msg(format!("{name}: shape {:?}, expected {shape:?}", tensor.dims())));
            }
            data.insert(name, Var::from_tensor(tensor)?);
        }
    }
    Ok(varmap)
}

/// The adapter vars in `lora_shapes` order, flagged as not decayed (LoRA is usually trained without
/// weight decay on B... and we keep A undecayed too).
pub fn ordered_lora_vars(config: &LlamaConfig, lora: &LoraConfig, varmap: &VarMap) -> Vec<(String, Var, bool)> {
    let data = varmap.data().lock().expect("varmap lock");
    lora_shapes(config, lora)
        .into_iter()
        .filter_map(|(name, _)| data.get(&name).map(|var| (name, var.clone(), true)))
        .collect()
}

/// Merge adapters into base weights: `W += (alpha / rank) · B A` for every targeted projection.
pub fn merge_lora(
    lora: &LoraConfig,
    base: &std::collections::HashMap<String, Tensor>,
    adapters: &std::collections::HashMap<String, Tensor>,
) -> Result<std::collections::HashMap<String, Tensor>> {
    let mut merged = base.clone();
    for (name, a) in adapters.iter().filter(|(n, _)| n.ends_with(".lora_A.weight")) {
        let prefix = name.trim_end_matches(".lora_A.weight");
        let b = adapters
            .get(&format!("{prefix}.lora_B.weight"))
            .ok_or_else(|| candle_core::Error::msg(format!("{prefix}: lora_B missing")))?;
        let weight_name = format!("{prefix}.weight");
        let weight =
            merged.get(&weight_name).ok_or_else(|| candle_core::Error::msg(format!("{weight_name} missing")))?;
        let updated = (weight + (b.matmul(a)? * lora.scale())?)?;
        merged.insert(weight_name, updated);
    }
    Ok(merged)
}
