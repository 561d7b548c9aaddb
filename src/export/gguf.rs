//! The native GGUF writer for `general.architecture = "llama"`: HF-named f32 tensors and a
//! tokenizer become one GGUF file per quant, with every metadata key typed exactly as llama.cpp
//! checks it (U32 counts, F32 eps/freq_base, I32 token types), Q/K rows permuted to llama.cpp's
//! interleaved RoPE layout, and candle's quantizers for q8_0 and the q4_k_m mix.

use std::collections::HashMap;
use std::io::BufWriter;
use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::Tensor;
use serde_json::Value as Json;
use tokenizers::Tokenizer;

use crate::model::chat_template::ChatTemplate;
use crate::model::llama::LlamaConfig;
use crate::model::tokenizer::QWEN2_REGEX;

/// The quantisations `export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Quant {
    F32,
    F16,
    Q8_0,
    Q4KM,
}

impl Quant {
    pub const ALL: [Quant; 4] = [Quant::F32, Quant::F16, Quant::Q8_0, Quant::Q4KM];

    pub fn as_str(self) -> &'static str {
        match self {
            Quant::F32 => "f32",
            Quant::F16 => "f16",
            Quant::Q8_0 => "q8_0",
            Quant::Q4KM => "q4_k_m",
        }
    }

    pub fn parse(text: &str) -> Option<Quant> {
        Quant::ALL.into_iter().find(|q| q.as_str().eq_ignore_ascii_case(text))
    }

    /// llama.cpp's `general.file_type` (LlamaFileType).
    fn file_type(self) -> u32 {
        match self {
            Quant::F32 => 0,
            Quant::F16 => 1,
            Quant::Q8_0 => 7,
            Quant::Q4KM => 15,
        }
    }

    /// The block every quantised row length must be a multiple of.
    fn block(self) -> usize {
        match self {
            Quant::F32 | Quant::F16 => 1,
            Quant::Q8_0 => 32,
            Quant::Q4KM => 256,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{quant} needs every weight row to be a multiple of {block} values long, but {tensor} has rows of {row} (shape {shape:?}); choose f32, f16{q8}")]
    Shape { quant: &'static str, block: usize, tensor: String, row: usize, shape: Vec<usize>, q8: &'static str },
    #[error("the tokenizer has {tokens} tokens but the embedding has {rows} rows")]
    Vocab { tokens: usize, rows: usize },
    #[error("missing tensor {0}")]
    Missing(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Provenance written as `understudy.*` keys.
#[derive(Debug, Clone, Default)]
pub struct Provenance {
    pub name: String,
    pub export_id: String,
    pub model_id: Option<String>,
    pub dataset_id: Option<String>,
    pub run_id: Option<String>,
}

/// The tokenizer as GGUF wants it: tokens by id, token types, merges, and the pre-tokenizer name.
pub struct GgufVocab {
    pub tokens: Vec<String>,
    pub types: Vec<i32>,
    pub merges: Vec<String>,
    pub pre: &'static str,
}

const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;

/// Name llama.cpp uses for the tokenizer's pre-tokenizer pipeline, recognised from its structure.
fn pre_tokenizer_name(pre: &Json) -> &'static str {
    let text = pre.to_string();
    if text.contains(&serde_json::to_string(QWEN2_REGEX).unwrap_or_default()) {
        "qwen2"
    } else if text.contains(r"\\p{N}{1,3}") {
        "llama-bpe"
    } else if text.contains("\"Digits\"") {
        "smollm"
    } else {
        "gpt-2"
    }
}

/// Tokens padded to `rows` (the embedding rows) with `[PAD{i}]`, types, merges as `"a b"`.
pub fn vocab(tokenizer: &Tokenizer, rows: usize) -> Result<GgufVocab, GgufError> {
    let json: Json =
        serde_json::from_str(&tokenizer.to_string(false).map_err(|e| GgufError::Tokenizer(e.to_string()))?)
            .map_err(|e| GgufError::Tokenizer(e.to_string()))?;
    let model = &json["model"];
    if model["type"].as_str() != Some("BPE") {
        return Err(GgufError::Tokenizer(format!(
            "only byte-level BPE tokenizers can be written to GGUF, not {}",
            model["type"]
        )));
    }
    let mut by_id: Vec<Option<(String, i32)>> = Vec::new();
    let mut put = |id: usize, text: String, kind: i32| {
        if by_id.len() <= id {
            by_id.resize(id + 1, None);
        }
        by_id[id] = Some((text, kind));
    };
    for (text, id) in model["vocab"].as_object().into_iter().flatten() {
        put(id.as_u64().unwrap_or(0) as usize, text.clone(), NORMAL);
    }
    for added in json["added_tokens"].as_array().into_iter().flatten() {
        let special = added["special"].as_bool().unwrap_or(false);
        let text = added["content"].as_str().unwrap_or_default().to_string();
        let looks_special = text.starts_with("<|") && text.ends_with("|>");
        put(
            added["id"].as_u64().unwrap_or(0) as usize,
            text,
            if special || looks_special { CONTROL } else { USER_DEFINED },
        );
    }
    if by_id.len() > rows {
        return Err(GgufError::Vocab { tokens: by_id.len(), rows });
    }
    by_id.resize(rows, None);
    let (tokens, types) = by_id
        .into_iter()
        .enumerate()
        .map(|(id, entry)| entry.unwrap_or_else(|| (format!("[PAD{id}]"), UNUSED)))
        .unzip();
    let merges = model["merges"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| match m {
            Json::String(text) => text.clone(),
            Json::Array(parts) => parts.iter().filter_map(Json::as_str).collect::<Vec<_>>().join(" "),
            other => other.to_string(),
        })
        .collect();
    Ok(GgufVocab { tokens, types, merges, pre: pre_tokenizer_name(&json["pre_tokenizer"]) })
}

/// HF rotate-half rows → llama.cpp interleaved rows (convert_hf_to_gguf's `permute`).
fn permute(weight: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let (rows, columns) = weight.dims2()?;
    weight.reshape((heads, 2, rows / heads / 2, columns))?.transpose(1, 2)?.contiguous()?.reshape((rows, columns))
}

/// llama.cpp's `use_more_bits`: the layers q4_k_m keeps at 6 bits.
fn use_more_bits(layer: usize, layers: usize) -> bool {
    layer < layers / 8 || layer >= 7 * layers / 8 || (layer as isize - (layers / 8) as isize) % 3 == 2
}

/// The GGML type of one tensor under a quant.
fn tensor_type(quant: Quant, gguf_name: &str, rank: usize, tied: bool, layers: usize) -> GgmlDType {
    if rank < 2 {
        return GgmlDType::F32;
    }
    match quant {
        Quant::F32 => GgmlDType::F32,
        Quant::F16 => GgmlDType::F16,
        Quant::Q8_0 => GgmlDType::Q8_0,
        Quant::Q4KM => {
            let layer =
                gguf_name.strip_prefix("blk.").and_then(|r| r.split('.').next()).and_then(|n| n.parse::<usize>().ok());
            let more_bits = |part: &str| gguf_name.ends_with(part) && layer.is_some_and(|l| use_more_bits(l, layers));
            if gguf_name == "output.weight"
                || (tied && gguf_name == "token_embd.weight")
                || more_bits("attn_v.weight")
                || more_bits("ffn_down.weight")
            {
                GgmlDType::Q6K
            } else {
                GgmlDType::Q4K
            }
        }
    }
}

/// GGUF tensor names in file order, with the HF name each comes from.
fn tensor_names(config: &LlamaConfig) -> Vec<(String, String)> {
    let mut names = vec![("token_embd.weight".to_string(), "model.embed_tokens.weight".to_string())];
    for layer in 0..config.num_hidden_layers {
        for (gguf, hf) in [
            ("attn_norm.weight", "input_layernorm.weight"),
            ("attn_q.weight", "self_attn.q_proj.weight"),
            ("attn_k.weight", "self_attn.k_proj.weight"),
            ("attn_v.weight", "self_attn.v_proj.weight"),
            ("attn_output.weight", "self_attn.o_proj.weight"),
            ("ffn_norm.weight", "post_attention_layernorm.weight"),
            ("ffn_gate.weight", "mlp.gate_proj.weight"),
            ("ffn_up.weight", "mlp.up_proj.weight"),
            ("ffn_down.weight", "mlp.down_proj.weight"),
        ] {
            names.push((format!("blk.{layer}.{gguf}"), format!("model.layers.{layer}.{hf}")));
        }
    }
    names.push(("output_norm.weight".into(), "model.norm.weight".into()));
    if !config.tie_word_embeddings {
        names.push(("output.weight".into(), "lm_head.weight".into()));
    }
    names
}

/// Refuse a quant the model's shapes cannot take, naming the first tensor that does not fit.
pub fn check_quant(config: &LlamaConfig, tensors: &HashMap<String, Tensor>, quant: Quant) -> Result<(), GgufError> {
    for (gguf_name, hf_name) in tensor_names(config) {
        let tensor = tensors.get(&hf_name).ok_or_else(|| GgufError::Missing(hf_name.clone()))?;
        let dims = tensor.dims();
        if dims.len() >= 2 {
            let block = match tensor_type(
                quant,
                &gguf_name,
                dims.len(),
                config.tie_word_embeddings,
                config.num_hidden_layers,
            ) {
                GgmlDType::Q4K | GgmlDType::Q6K => 256,
                GgmlDType::Q8_0 => 32,
                _ => 1,
            };
            let row = dims[dims.len() - 1];
            if row % block != 0 {
                return Err(GgufError::Shape {
                    quant: quant.as_str(),
                    block,
                    tensor: hf_name,
                    row,
                    shape: dims.to_vec(),
                    q8: if row % Quant::Q8_0.block() == 0 && quant != Quant::Q8_0 { " or q8_0" } else { "" },
                });
            }
        }
    }
    Ok(())
}

/// llama.cpp's `rope_freqs.weight` for Llama 3 rope scaling (convert_hf_to_gguf's factors).
fn rope_factors(config: &LlamaConfig) -> Option<Vec<f32>> {
    let scaling = config.rope_scaling.as_ref()?;
    let head_dim = config.head_dim();
    let low_wavelen = scaling.original_max_position_embeddings as f64 / scaling.low_freq_factor;
    let high_wavelen = scaling.original_max_position_embeddings as f64 / scaling.high_freq_factor;
    Some(
        (0..head_dim)
            .step_by(2)
            .map(|i| {
                let freq = 1.0 / config.rope_theta.powf(i as f64 / head_dim as f64);
                let wavelen = 2.0 * std::f64::consts::PI / freq;
                let factor = if wavelen < high_wavelen {
                    1.0
                } else if wavelen > low_wavelen {
                    scaling.factor
                } else {
                    let smooth = (scaling.original_max_position_embeddings as f64 / wavelen - scaling.low_freq_factor)
                        / (scaling.high_freq_factor - scaling.low_freq_factor);
                    1.0 / ((1.0 - smooth) / scaling.factor + smooth)
                };
                factor as f32
            })
            .collect(),
    )
}

/// Every metadata key, typed exactly as llama.cpp reads it.
fn metadata(
    config: &LlamaConfig,
    vocab: &GgufVocab,
    tokenizer: &Tokenizer,
    template: &ChatTemplate,
    quant: Quant,
    provenance: &Provenance,
) -> Vec<(String, Value)> {
    let u32v = |v: usize| Value::U32(v as u32);
    let id_of = |text: &str| (!text.is_empty()).then(|| tokenizer.token_to_id(text)).flatten();
    let mut md: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String("llama".into())),
        ("general.name".into(), Value::String(provenance.name.clone())),
        ("general.file_type".into(), Value::U32(quant.file_type())),
        ("general.quantization_version".into(), Value::U32(2)),
        ("llama.context_length".into(), u32v(config.max_position_embeddings)),
        ("llama.embedding_length".into(), u32v(config.hidden_size)),
        ("llama.block_count".into(), u32v(config.num_hidden_layers)),
        ("llama.feed_forward_length".into(), u32v(config.intermediate_size)),
        ("llama.attention.head_count".into(), u32v(config.num_attention_heads)),
        ("llama.attention.head_count_kv".into(), u32v(config.num_key_value_heads)),
        ("llama.rope.freq_base".into(), Value::F32(config.rope_theta as f32)),
        ("llama.rope.dimension_count".into(), u32v(config.head_dim())),
        ("llama.attention.layer_norm_rms_epsilon".into(), Value::F32(config.rms_norm_eps as f32)),
        ("llama.vocab_size".into(), u32v(vocab.tokens.len())),
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String(vocab.pre.into())),
        ("tokenizer.ggml.tokens".into(), Value::Array(vocab.tokens.iter().map(|t| Value::String(t.clone())).collect())),
        ("tokenizer.ggml.token_type".into(), Value::Array(vocab.types.iter().map(|&t| Value::I32(t)).collect())),
        ("tokenizer.ggml.merges".into(), Value::Array(vocab.merges.iter().map(|m| Value::String(m.clone())).collect())),
    ];
    let eos = id_of(&template.eos_token).or_else(|| template.end_of_turn.first().and_then(|t| id_of(t)));
    let eot = template.end_of_turn.first().and_then(|t| id_of(t));
    let bos = id_of(&template.bos_token).or_else(|| id_of("<|endoftext|>")).or(eos);
    let pad = id_of("<|endoftext|>").or_else(|| id_of("<|finetune_right_pad_id|>")).or(eos);
    for (key, id) in [
        ("tokenizer.ggml.bos_token_id", bos),
        ("tokenizer.ggml.eos_token_id", eos),
        ("tokenizer.ggml.eot_token_id", eot),
        ("tokenizer.ggml.padding_token_id", pad),
    ] {
        if let Some(id) = id {
            md.push((key.into(), Value::U32(id)));
        }
    }
    if template.end_of_turn.len() > 1 {
        if let Some(eom) = template.end_of_turn.iter().find(|t| t.as_str() == "<|eom_id|>").and_then(|t| id_of(t)) {
            md.push(("tokenizer.ggml.eom_token_id".into(), Value::U32(eom)));
        }
    }
    // The chat template writes the BOS text itself when the family has one.
    md.push(("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)));
    md.push(("tokenizer.ggml.add_eos_token".into(), Value::Bool(false)));
    md.push(("tokenizer.chat_template".into(), Value::String(template.source.clone())));
    md.push(("understudy.export_id".into(), Value::String(provenance.export_id.clone())));
    for (key, value) in [
        ("understudy.model_id", &provenance.model_id),
        ("understudy.dataset_id", &provenance.dataset_id),
        ("understudy.run_id", &provenance.run_id),
    ] {
        if let Some(value) = value {
            md.push((key.into(), Value::String(value.clone())));
        }
    }
    md
}

/// Write one GGUF file (to `path`, which the caller renames into place).
pub fn write(
    path: &Path,
    config: &LlamaConfig,
    tensors: &HashMap<String, Tensor>,
    tokenizer: &Tokenizer,
    template: &ChatTemplate,
    quant: Quant,
    provenance: &Provenance,
) -> Result<(), GgufError> {
    check_quant(config, tensors, quant)?;
    let vocab = vocab(tokenizer, config.vocab_size)?;
    let md = metadata(config, &vocab, tokenizer, template, quant, provenance);
    let mut qtensors: Vec<(String, QTensor)> = Vec::new();
    for (gguf_name, hf_name) in tensor_names(config) {
        let tensor = tensors
            .get(&hf_name)
            .ok_or_else(|| GgufError::Missing(hf_name.clone()))?
            .to_dtype(candle_core::DType::F32)?;
        let tensor = if gguf_name.ends_with("attn_q.weight") {
            permute(&tensor, config.num_attention_heads)?
        } else if gguf_name.ends_with("attn_k.weight") {
            permute(&tensor, config.num_key_value_heads)?
        } else {
            tensor
        };
        let dtype = tensor_type(quant, &gguf_name, tensor.rank(), config.tie_word_embeddings, config.num_hidden_layers);
        qtensors.push((gguf_name, QTensor::quantize(&tensor, dtype)?));
    }
    if let Some(factors) = rope_factors(config) {
        let n = factors.len();
        let tensor = Tensor::from_vec(factors, n, &candle_core::Device::Cpu)?;
        qtensors.push(("rope_freqs.weight".into(), QTensor::quantize(&tensor, GgmlDType::F32)?));
    }
    let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = qtensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut file = BufWriter::new(std::fs::File::create(path)?);
    gguf_file::write(&mut file, &md_refs, &tensor_refs)?;
    file.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_interleaves_each_head() {
        // One head of dim 4: HF rows [r0 r1 | r2 r3] pair (0,2),(1,3); llama.cpp wants 0,2,1,3.
        let rows = Tensor::from_vec((0..8u32).map(|v| v as f32).collect::<Vec<_>>(), (4, 2), &candle_core::Device::Cpu)
            .unwrap();
        let permuted = permute(&rows, 1).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(permuted, vec![vec![0., 1.], vec![4., 5.], vec![2., 3.], vec![6., 7.]]);
    }

    #[test]
    fn q4_k_m_keeps_six_bits_where_llama_cpp_does() {
        assert_eq!(tensor_type(Quant::Q4KM, "token_embd.weight", 2, true, 4), GgmlDType::Q6K);
        assert_eq!(tensor_type(Quant::Q4KM, "token_embd.weight", 2, false, 4), GgmlDType::Q4K);
        assert_eq!(tensor_type(Quant::Q4KM, "blk.0.ffn_down.weight", 2, true, 4), GgmlDType::Q4K);
        assert_eq!(tensor_type(Quant::Q4KM, "blk.3.attn_v.weight", 2, true, 4), GgmlDType::Q6K);
        assert_eq!(tensor_type(Quant::Q4KM, "blk.1.attn_q.weight", 2, true, 4), GgmlDType::Q4K);
        assert_eq!(tensor_type(Quant::Q4KM, "blk.1.attn_norm.weight", 1, true, 4), GgmlDType::F32);
    }
}
