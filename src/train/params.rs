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
                let std = if name.ends_with("o_proj.weight") || name.ends_with("down_proj.weight") { residual_std } else { 0.02 };
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
