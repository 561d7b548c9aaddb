//! The LLaMA architecture in candle: RMSNorm, RoPE (with Llama-3 rope scaling), grouped-query
//! attention with a causal mask, SwiGLU, tied or untied embeddings. One forward pass serves
//! training (all positions, only differentiable ops: manual RMSNorm, `rope_slow`,
//! `ops::softmax`) and generation (with a KV cache). Weight names follow Hugging Face, so
//! checkpoints load from and save to the same safetensors layout.

use super::ops;
use candle_core::{DType, Device, IndexOp, Module, Result, Tensor, D};
use candle_nn::{Embedding, Linear, VarBuilder};
use serde::{Deserialize, Serialize};

/// Llama 3 RoPE frequency scaling (`rope_scaling` with `rope_type: "llama3"` in config.json).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RopeScaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: usize,
    #[serde(default)]
    pub rope_type: Option<String>,
}

/// The architecture, with Hugging Face `config.json` field names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    #[serde(default = "default_positions")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub rope_scaling: Option<RopeScaling>,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<serde_json::Value>,
}

fn default_eps() -> f64 {
    1e-5
}
fn default_theta() -> f64 {
    10_000.0
}
fn default_positions() -> usize {
    2048
}

impl LlamaConfig {
    /// The `tiny` preset: d256, 4 layers, 4 heads over 2 KV heads, SwiGLU 768, tied embeddings.
    /// Every weight row is a multiple of 256 long, so K-quants can take it.
    pub fn tiny(vocab_size: usize) -> LlamaConfig {
        LlamaConfig {
            vocab_size,
            hidden_size: 256,
            intermediate_size: 768,
            num_hidden_layers: 4,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            max_position_embeddings: 2048,
            tie_word_embeddings: true,
            rope_scaling: None,
            bos_token_id: None,
            eos_token_id: None,
        }
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    pub fn validate(&self) -> std::result::Result<(), String> {
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err("hidden_size must be a multiple of num_attention_heads".into());
        }
        if !self.num_attention_heads.is_multiple_of(self.num_key_value_heads) {
            return Err("num_attention_heads must be a multiple of num_key_value_heads".into());
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err("the head dimension must be even for RoPE".into());
        }
        Ok(())
    }

    /// Inverse RoPE frequencies, with Llama 3 scaling when configured.
    fn inverse_frequencies(&self) -> Vec<f32> {
        let head_dim = self.head_dim();
        let base: Vec<f64> =
            (0..head_dim).step_by(2).map(|i| 1.0 / self.rope_theta.powf(i as f64 / head_dim as f64)).collect();
        let Some(scaling) = &self.rope_scaling else {
            return base.into_iter().map(|f| f as f32).collect();
        };
        let low_wavelen = scaling.original_max_position_embeddings as f64 / scaling.low_freq_factor;
        let high_wavelen = scaling.original_max_position_embeddings as f64 / scaling.high_freq_factor;
        base.into_iter()
            .map(|freq| {
                let wavelen = 2.0 * std::f64::consts::PI / freq;
                let scaled = if wavelen < high_wavelen {
                    freq
                } else if wavelen > low_wavelen {
                    freq / scaling.factor
                } else {
                    let smooth = (scaling.original_max_position_embeddings as f64 / wavelen - scaling.low_freq_factor)
                        / (scaling.high_freq_factor - scaling.low_freq_factor);
                    (1.0 - smooth) * freq / scaling.factor + smooth * freq
                };
                scaled as f32
            })
            .collect()
    }
}

/// LoRA adapters: `y = W x + (alpha / rank) · B A x` on the targeted projections.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f64,
    /// Dropout on the adapter's input during training (0 disables it).
    #[serde(default)]
    pub dropout: f64,
    /// Projection names: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj.
    pub targets: Vec<String>,
}

impl LoraConfig {
    pub const PROJECTIONS: [&'static str; 7] =
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.rank == 0 || self.rank > 1024 {
            return Err("lora rank must be 1 to 1024".into());
        }
        if let Some(bad) = self.targets.iter().find(|t| !Self::PROJECTIONS.contains(&t.as_str())) {
            return Err(format!("lora target {bad:?} is not one of {}", Self::PROJECTIONS.join(", ")));
        }
        if self.targets.is_empty() {
            return Err("lora needs at least one target".into());
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err("lora dropout must be at least 0 and below 1".into());
        }
        Ok(())
    }
}

/// Seeds LoRA dropout masks while training; `None` (evaluation, generation) disables dropout.
/// Masks come from a seeded generator, so a resumed run draws the same masks.
#[derive(Clone, Default)]
pub struct DropoutSeed(std::sync::Arc<std::sync::Mutex<Option<u64>>>);

impl DropoutSeed {
    pub fn set(&self, seed: Option<u64>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = seed;
    }

    fn get(&self) -> Option<u64> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// `x · Wᵀ` over the last dimension as one 2-D matrix product: leading dimensions are folded
/// into rows, so forward and backward are single large GEMMs instead of one per batch row with
/// a broadcast weight (what `Linear::forward` does for 3-D input).
fn project(linear: &Linear, x: &Tensor) -> Result<Tensor> {
    let dims = x.dims();
    let (rows, width) = (dims[..dims.len() - 1].iter().product::<usize>(), dims[dims.len() - 1]);
    let x = x.reshape((rows, width))?;
    let weight = linear.weight();
    let y = if x.track_op() && !weight.is_variable() && ops::fused(x.device(), x.dtype()) {
        ops::frozen_product(&x, weight)?
    } else {
        x.matmul(&weight.t()?)?
    };
    let mut out = dims[..dims.len() - 1].to_vec();
    out.push(y.dim(1)?);
    y.reshape(out)
}

/// A projection, frozen or trainable, with an optional LoRA adapter.
struct Proj {
    base: Linear,
    adapter: Option<(Linear, Linear, f64)>,
    dropout: f64,
    /// Distinguishes this projection's masks from the others'.
    index: u64,
    seed: DropoutSeed,
}

impl Proj {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = project(&self.base, x)?;
        let Some((a, b, scale)) = &self.adapter else { return Ok(y) };
        let input = match self.seed.get() {
            Some(seed) if self.dropout > 0.0 => {
                use rand::{Rng, SeedableRng};
                let mut rng =
                    rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ self.index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
                let keep = 1.0 - self.dropout;
                let mask: Vec<f32> = (0..x.elem_count())
                    .map(|_| if rng.random::<f64>() < keep { (1.0 / keep) as f32 } else { 0.0 })
                    .collect();
                (x * Tensor::from_vec(mask, x.shape(), x.device())?)?
            }
            _ => x.clone(),
        };
        y + (project(b, &project(a, &input)?)? * *scale)?
    }
}

struct Block {
    q_proj: Proj,
    k_proj: Proj,
    v_proj: Proj,
    o_proj: Proj,
    gate_proj: Proj,
    up_proj: Proj,
    down_proj: Proj,
    input_norm: Tensor,
    post_attention_norm: Tensor,
}

/// Keys and values of earlier positions, per layer, for generation.
#[derive(Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
}

impl KvCache {
    pub fn new(n_layers: usize) -> KvCache {
        KvCache { layers: (0..n_layers).map(|_| None).collect() }
    }

    /// Positions already cached.
    pub fn len(&self) -> usize {
        self.layers.first().and_then(|l| l.as_ref()).map_or(0, |(k, _)| k.dim(2).unwrap_or(0))
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keep only the first `len` positions: a new prompt that shares only a prefix with what is
    /// cached continues from there.
    pub fn truncate(&mut self, len: usize) -> Result<()> {
        for layer in &mut self.layers {
            if let Some((k, v)) = layer.take() {
                if len > 0 {
                    let keep = len.min(k.dim(2)?);
                    *layer = Some((k.narrow(2, 0, keep)?.contiguous()?, v.narrow(2, 0, keep)?.contiguous()?));
                }
            }
        }
        Ok(())
    }
}

pub struct Llama {
    pub config: LlamaConfig,
    /// Set by the trainer each step to enable LoRA dropout.
    pub dropout_seed: DropoutSeed,
    embed_tokens: Embedding,
    blocks: Vec<Block>,
    norm: Tensor,
    lm_head: Linear,
    cos: Tensor,
    sin: Tensor,
}

fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    if ops::fused(x.device(), x.dtype()) {
        return ops::rms_norm(x, weight, eps);
    }
    let mean_square = x.sqr()?.mean_keepdim(D::Minus1)?;
    x.broadcast_div(&(mean_square + eps)?.sqrt()?)?.broadcast_mul(weight)
}

impl Llama {
    /// Build from weights named as in Hugging Face checkpoints.
    pub fn new(config: LlamaConfig, vb: VarBuilder) -> Result<Llama> {
        Llama::new_with_lora(config, vb, None)
    }

    /// Build with LoRA adapters on the targeted projections, read from `adapters`
    /// (`<projection>.lora_A.weight` (rank, in) and `.lora_B.weight` (out, rank)).
    pub fn new_with_lora(
        config: LlamaConfig,
        vb: VarBuilder,
        lora: Option<(&LoraConfig, VarBuilder)>,
    ) -> Result<Llama> {
        config.validate().map_err(candle_core::Error::msg)?;
        let (d, head_dim) = (config.hidden_size, config.head_dim());
        let (n_heads, n_kv) = (config.num_attention_heads, config.num_key_value_heads);
        let embed_weight = vb.pp("model.embed_tokens").get((config.vocab_size, d), "weight")?;
        let embed_tokens = Embedding::new(embed_weight.clone(), d);
        let linear = |vb: VarBuilder, input: usize, output: usize| -> Result<Linear> {
            Ok(Linear::new(vb.get((output, input), "weight")?, None))
        };
        let dropout_seed = DropoutSeed::default();
        let counter = std::cell::Cell::new(0u64);
        let proj = |prefix: &str, vb: VarBuilder, input: usize, output: usize| -> Result<Proj> {
            counter.set(counter.get() + 1);
            let base = linear(vb, input, output)?;
            let name = prefix.rsplit('.').next().unwrap_or(prefix);
            let adapter = match &lora {
                Some((spec, adapters)) if spec.targets.iter().any(|t| t == name) => {
                    let at = adapters.pp(prefix);
                    let a = Linear::new(at.pp("lora_A").get((spec.rank, input), "weight")?, None);
                    let b = Linear::new(at.pp("lora_B").get((output, spec.rank), "weight")?, None);
                    Some((a, b, spec.scale()))
                }
                _ => None,
            };
            let dropout = lora.as_ref().map_or(0.0, |(spec, _)| spec.dropout);
            Ok(Proj { base, adapter, dropout, index: counter.get(), seed: dropout_seed.clone() })
        };
        let mut blocks = Vec::with_capacity(config.num_hidden_layers);
        for index in 0..config.num_hidden_layers {
            let layer = format!("model.layers.{index}");
            let vb = vb.pp(&layer);
            let attention = vb.pp("self_attn");
            let mlp = vb.pp("mlp");
            let at = |part: &str| format!("{layer}.{part}");
            blocks.push(Block {
                q_proj: proj(&at("self_attn.q_proj"), attention.pp("q_proj"), d, n_heads * head_dim)?,
                k_proj: proj(&at("self_attn.k_proj"), attention.pp("k_proj"), d, n_kv * head_dim)?,
                v_proj: proj(&at("self_attn.v_proj"), attention.pp("v_proj"), d, n_kv * head_dim)?,
                o_proj: proj(&at("self_attn.o_proj"), attention.pp("o_proj"), n_heads * head_dim, d)?,
                gate_proj: proj(&at("mlp.gate_proj"), mlp.pp("gate_proj"), d, config.intermediate_size)?,
                up_proj: proj(&at("mlp.up_proj"), mlp.pp("up_proj"), d, config.intermediate_size)?,
                down_proj: proj(&at("mlp.down_proj"), mlp.pp("down_proj"), config.intermediate_size, d)?,
                input_norm: vb.pp("input_layernorm").get(d, "weight")?,
                post_attention_norm: vb.pp("post_attention_layernorm").get(d, "weight")?,
            });
        }
        let norm = vb.pp("model.norm").get(d, "weight")?;
        let lm_head = if config.tie_word_embeddings {
            Linear::new(embed_weight, None)
        } else {
            linear(vb.pp("lm_head"), d, config.vocab_size)?
        };
        let device = vb.device().clone();
        let inverse = config.inverse_frequencies();
        let positions = config.max_position_embeddings;
        let inverse = Tensor::from_vec(inverse.clone(), (1, inverse.len()), &device)?;
        let steps = Tensor::arange(0u32, positions as u32, &device)?.to_dtype(DType::F32)?.reshape((positions, 1))?;
        let angles = steps.matmul(&inverse)?;
        Ok(Llama { cos: angles.cos()?, sin: angles.sin()?, config, dropout_seed, embed_tokens, blocks, norm, lm_head })
    }

    /// The hidden states after the final norm, `(b, t, d)`. `cache` makes this an incremental step.
    pub fn hidden(&self, ids: &Tensor, cache: Option<&mut KvCache>) -> Result<Tensor> {
        match self.layers(ids, cache, false)? {
            Some(hidden) => Ok(hidden),
            None => candle_core::bail!("the layers stopped before the last one"),
        }
    }

    /// The keys and values of `ids` `(1, t)`, as a cache that any batch continues from (a
    /// one-row cache serves every row). Gradients flow through it; the last layer stops once
    /// its keys and values are known.
    pub fn prefill(&self, ids: &Tensor) -> Result<KvCache> {
        let mut cache = KvCache::new(self.blocks.len());
        self.layers(ids, Some(&mut cache), true)?;
        Ok(cache)
    }

    /// The decoder stack; with `keys_only`, stops after the last layer's keys and values are cached.
    fn layers(&self, ids: &Tensor, mut cache: Option<&mut KvCache>, keys_only: bool) -> Result<Option<Tensor>> {
        let (b, t) = ids.dims2()?;
        let offset = cache.as_ref().map_or(0, |c| c.len());
        if offset + t > self.config.max_position_embeddings {
            candle_core::bail!(
                "sequence of {} tokens is longer than the model's {} positions",
                offset + t,
                self.config.max_position_embeddings
            );
        }
        let (n_heads, n_kv, head_dim) =
            (self.config.num_attention_heads, self.config.num_key_value_heads, self.config.head_dim());
        let cos = self.cos.narrow(0, offset, t)?;
        let sin = self.sin.narrow(0, offset, t)?;
        let total = offset + t;
        let group = n_heads / n_kv;
        // The fused causal softmax masks by itself; the composed path adds a mask over
        // (group * t, offset + t): position i may see keys up to offset + i.
        let fused = ops::fused(ids.device(), self.cos.dtype());
        let mask = if fused {
            None
        } else {
            let mask: Vec<f32> = (0..group)
                .flat_map(|_| {
                    (0..t).flat_map(move |i| {
                        (0..total).map(move |j| if j > offset + i { f32::NEG_INFINITY } else { 0.0 })
                    })
                })
                .collect();
            Some(Tensor::from_vec(mask, (group * t, total), ids.device())?)
        };
        let rope =
            |x: &Tensor| if fused { ops::rope(x, &cos, &sin) } else { candle_nn::rotary_emb::rope_slow(x, &cos, &sin) };
        let mut x = self.embed_tokens.forward(ids)?;
        for (index, block) in self.blocks.iter().enumerate() {
            let h = rms_norm(&x, &block.input_norm, self.config.rms_norm_eps)?;
            let q = block.q_proj.forward(&h)?.reshape((b, t, n_heads, head_dim))?.transpose(1, 2)?.contiguous()?;
            let k = block.k_proj.forward(&h)?.reshape((b, t, n_kv, head_dim))?.transpose(1, 2)?.contiguous()?;
            let v = block.v_proj.forward(&h)?.reshape((b, t, n_kv, head_dim))?.transpose(1, 2)?.contiguous()?;
            let q = rope(&q)?;
            let mut k = rope(&k)?;
            let mut v = v;
            if let Some(cache) = cache.as_deref_mut() {
                if let Some((past_k, past_v)) = &cache.layers[index] {
                    // A prefix cached once for a whole batch (one row) serves every row.
                    let (past_k, past_v) = if past_k.dim(0)? == b {
                        (past_k.clone(), past_v.clone())
                    } else {
                        let (_, heads, cached, width) = past_k.dims4()?;
                        (
                            past_k.broadcast_as((b, heads, cached, width))?,
                            past_v.broadcast_as((b, heads, cached, width))?,
                        )
                    };
                    k = Tensor::cat(&[&past_k, &k], 2)?.contiguous()?;
                    v = Tensor::cat(&[&past_v, &v], 2)?.contiguous()?;
                }
                cache.layers[index] = Some((k.clone(), v.clone()));
                if keys_only && index + 1 == self.blocks.len() {
                    return Ok(None);
                }
            }
            // Grouped-query attention without copying K/V: the query heads that share a KV head
            // are stacked along the time axis, (b, n_kv, group * t, head_dim).
            let q = q.reshape((b, n_kv, group * t, head_dim))?;
            let scale = 1.0 / (head_dim as f64).sqrt();
            let attention = match &mask {
                None => ops::causal_softmax(&q.matmul(&k.t()?)?, t, offset, scale)?,
                Some(mask) => candle_nn::ops::softmax(&(q.matmul(&k.t()?)? * scale)?.broadcast_add(mask)?, D::Minus1)?,
            };
            let y = attention.matmul(&v)?.reshape((b, n_heads, t, head_dim))?.transpose(1, 2)?.reshape((
                b,
                t,
                n_heads * head_dim,
            ))?;
            x = (x + block.o_proj.forward(&y)?)?;
            let h = rms_norm(&x, &block.post_attention_norm, self.config.rms_norm_eps)?;
            let (gate, up) = (block.gate_proj.forward(&h)?, block.up_proj.forward(&h)?);
            let mlp =
                block.down_proj.forward(&if fused { ops::silu_mul(&gate, &up)? } else { (gate.silu()? * up)? })?;
            x = (x + mlp)?;
        }
        rms_norm(&x, &self.norm, self.config.rms_norm_eps).map(Some)
    }

    pub fn cos_device(&self) -> Device {
        self.cos.device().clone()
    }

    /// Logits for hidden states `(..., hidden)`.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        project(&self.lm_head, hidden)
    }

    /// Logits for every position, `(b, t, vocab)`.
    pub fn forward(&self, ids: &Tensor, cache: Option<&mut KvCache>) -> Result<Tensor> {
        project(&self.lm_head, &self.hidden(ids, cache)?)
    }

    /// Logits of the last position only, `(b, vocab)` — the generation step.
    pub fn forward_last(&self, ids: &Tensor, cache: Option<&mut KvCache>) -> Result<Tensor> {
        let hidden = self.hidden(ids, cache)?;
        let t = hidden.dim(1)?;
        self.lm_head.forward(&hidden.i((.., t - 1, ..))?.contiguous()?)
    }
}

/// Mean negative log-likelihood of `targets` over positions where `mask` is 1.
/// `logits`: (n, vocab) f32; `targets`: (n,) u32; `mask`: (n,) f32.
pub fn masked_cross_entropy(logits: &Tensor, targets: &Tensor, mask: &Tensor) -> Result<Tensor> {
    if ops::fused(logits.device(), logits.dtype()) {
        return ops::masked_cross_entropy(
            logits,
            &targets.to_vec1::<u32>()?,
            &mask.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?,
        );
    }
    let log_probs = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let picked = log_probs.gather(&targets.unsqueeze(1)?.contiguous()?, 1)?.squeeze(1)?;
    let total = mask.sum_all()?;
    (picked * mask)?.sum_all()?.neg()?.broadcast_div(&total.maximum(1.0)?)
}

pub fn device_for(name: &str) -> std::result::Result<Device, String> {
    match name {
        "cpu" => Ok(Device::Cpu),
        // The first CUDA device when built with `--features cuda` and one is present, else CPU.
        "auto" => Device::cuda_if_available(0).map_err(|e| e.to_string()),
        other if other.starts_with("cuda") => {
            let ordinal = other
                .strip_prefix("cuda:")
                .map(|n| n.parse::<usize>().map_err(|_| format!("bad device {other:?}")))
                .transpose()?
                .unwrap_or(0);
            Device::new_cuda(ordinal)
                .map_err(|e| format!("{other}: {e} (build with --features cuda on a machine with CUDA)"))
        }
        other => Err(format!("unknown device {other:?} (expected auto, cpu or cuda[:N])")),
    }
}
