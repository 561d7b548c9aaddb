//! Loading pretrained weights into Hugging Face names: a Hugging Face directory (config.json and
//! one or sharded safetensors) or a GGUF file (metadata → config; tensors dequantized to f32;
//! llama.cpp's Q/K row permutation undone; GGUF names mapped to HF names).

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};

use super::llama::LlamaConfig;
use super::source::ModelSource;

fn err(message: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("{message}")
}

/// Open a GGUF file and read its header, after checking that every count and length in it fits
/// the file: candle's reader allocates what a header claims, so a hostile or corrupt header
/// (a string "length" of 2^62) would abort the process instead of failing.
pub fn read_gguf(path: &Path) -> anyhow::Result<(std::fs::File, gguf_file::Content)> {
    let shown = || path.display().to_string();
    let mut file = std::fs::File::open(path).map_err(|e| err(format!("{}: {e}", shown())))?;
    let size = file.metadata().map_err(|e| err(format!("{}: {e}", shown())))?.len();
    check_gguf_header(&mut std::io::BufReader::new(&mut file), size)
        .map_err(|e| err(format!("{}: not a readable GGUF header: {e}", shown())))?;
    use std::io::Seek;
    file.rewind()?;
    let content = gguf_file::Content::read(&mut file).map_err(|e| err(format!("{}: {e}", shown())))?;
    Ok((file, content))
}

/// Walk a GGUF header (v2/v3) and refuse any count or length the remaining bytes cannot hold.
fn check_gguf_header(reader: &mut impl std::io::Read, size: u64) -> Result<(), String> {
    struct Cursor<'a, R> {
        reader: &'a mut R,
        at: u64,
        size: u64,
    }
    impl<R: std::io::Read> Cursor<'_, R> {
        fn bytes<const N: usize>(&mut self) -> Result<[u8; N], String> {
            let mut buffer = [0u8; N];
            self.reader.read_exact(&mut buffer).map_err(|_| format!("ends at byte {}", self.at))?;
            self.at += N as u64;
            Ok(buffer)
        }
        fn u32(&mut self) -> Result<u32, String> {
            Ok(u32::from_le_bytes(self.bytes::<4>()?))
        }
        fn u64(&mut self) -> Result<u64, String> {
            Ok(u64::from_le_bytes(self.bytes::<8>()?))
        }
        fn left(&self) -> u64 {
            self.size.saturating_sub(self.at)
        }
        /// A count of items of at least `each` bytes that must fit what is left.
        fn count(&mut self, each: u64, what: &str) -> Result<u64, String> {
            let at = self.at;
            let count = self.u64()?;
            if count.checked_mul(each.max(1)).is_none_or(|n| n > self.left()) {
                return Err(format!("{what} {count} at byte {at} does not fit the {} bytes left", self.left()));
            }
            Ok(count)
        }
        fn skip(&mut self, n: u64) -> Result<(), String> {
            let copied =
                std::io::copy(&mut <&mut R as std::io::Read>::take(&mut *self.reader, n), &mut std::io::sink())
                    .map_err(|e| e.to_string())?;
            self.at += copied;
            if copied < n {
                return Err(format!("ends at byte {}", self.at));
            }
            Ok(())
        }
        fn string(&mut self) -> Result<(), String> {
            let length = self.count(1, "a string length")?;
            self.skip(length)
        }
        fn value(&mut self, kind: u32, depth: u32) -> Result<(), String> {
            match kind {
                0 | 1 | 7 => self.skip(1),
                2 | 3 => self.skip(2),
                4..=6 => self.skip(4),
                10..=12 => self.skip(8),
                8 => self.string(),
                9 if depth < 2 => {
                    let element = self.u32()?;
                    let each = match element {
                        0 | 1 | 7 => 1,
                        2 | 3 => 2,
                        4..=6 => 4,
                        8 | 10..=12 => 8,
                        9 => 12,
                        other => return Err(format!("unknown array element type {other}")),
                    };
                    for _ in 0..self.count(each, "an array length")? {
                        self.value(element, depth + 1)?;
                    }
                    Ok(())
                }
                other => Err(format!("unknown value type {other}")),
            }
        }
    }
    let mut cursor = Cursor { reader, at: 0, size };
    if &cursor.bytes::<4>()? != b"GGUF" {
        return Err("no GGUF magic".into());
    }
    let version = cursor.u32()?;
    if !(2..=3).contains(&version) {
        return Err(format!("GGUF version {version} (2 and 3 are read)"));
    }
    // A tensor entry is at least 8 (name) + 4 + 8 + 4 + 8 bytes; a key-value at least 8 + 4 + 1.
    let tensors = cursor.count(32, "a tensor count")?;
    let entries = cursor.count(13, "a metadata count")?;
    for _ in 0..entries {
        cursor.string()?;
        let kind = cursor.u32()?;
        cursor.value(kind, 0)?;
    }
    for _ in 0..tensors {
        cursor.string()?;
        let dims = cursor.u32()?;
        if dims > 8 {
            return Err(format!("a tensor with {dims} dimensions at byte {}", cursor.at));
        }
        let mut elements: u64 = 1;
        for _ in 0..dims {
            elements = elements.checked_mul(cursor.u64()?).ok_or("tensor dimensions overflow")?;
        }
        // No GGUF type packs more than 4 elements per byte.
        if elements > size.saturating_mul(4) {
            return Err(format!("a tensor of {elements} elements in a file of {size} bytes"));
        }
        cursor.skip(12)?;
    }
    Ok(())
}

/// Config and f32 tensors (HF names) of a pretrained model.
pub fn load(source: &ModelSource, device: &Device) -> anyhow::Result<(LlamaConfig, HashMap<String, Tensor>)> {
    match source {
        ModelSource::Tiny => Err(err("the tiny preset has no pretrained weights")),
        ModelSource::HfDir(dir) => load_hf_dir(dir, device),
        ModelSource::Gguf(path) => load_gguf(path, device),
    }
}

fn load_hf_dir(dir: &Path, device: &Device) -> anyhow::Result<(LlamaConfig, HashMap<String, Tensor>)> {
    let config = read_config(&ModelSource::HfDir(dir.to_path_buf()))?;
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(err(format!("{}: no *.safetensors files", dir.display())));
    }
    let mut tensors = HashMap::new();
    for file in files {
        for (name, tensor) in candle_core::safetensors::load(&file, device)? {
            tensors.insert(name, tensor.to_dtype(DType::F32)?);
        }
    }
    Ok((config, tensors))
}

fn metadata_usize(content: &gguf_file::Content, key: &str) -> anyhow::Result<usize> {
    let value = content.metadata.get(key).ok_or_else(|| err(format!("GGUF metadata lacks {key}")))?;
    Ok(value.to_u32().map(|v| v as usize).or_else(|_| value.to_u64().map(|v| v as usize))?)
}

fn metadata_f64(content: &gguf_file::Content, key: &str, default: f64) -> f64 {
    content.metadata.get(key).and_then(|v| v.to_f32().ok()).map_or(default, f64::from)
}

/// Undo convert_hf_to_gguf's Q/K permutation: rows go back to HF's rotate-half layout.
fn unpermute(weight: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let (rows, columns) = weight.dims2()?;
    weight.reshape((heads, rows / heads / 2, 2, columns))?.transpose(1, 2)?.contiguous()?.reshape((rows, columns))
}

/// A model's configuration without its weights: config.json of an HF directory or the GGUF
/// metadata.
pub fn read_config(source: &ModelSource) -> anyhow::Result<LlamaConfig> {
    match source {
        ModelSource::Tiny => Err(err("the tiny preset has no pretrained configuration")),
        ModelSource::HfDir(dir) => serde_json::from_str(&std::fs::read_to_string(dir.join("config.json"))?)
            .map_err(|e| err(format!("{}: {e}", dir.join("config.json").display()))),
        ModelSource::Gguf(path) => {
            let (_, content) = read_gguf(path)?;
            gguf_config(path, &content)
        }
    }
}

fn gguf_config(path: &Path, content: &gguf_file::Content) -> anyhow::Result<LlamaConfig> {
    let arch =
        content.metadata.get("general.architecture").and_then(|v| v.to_string().ok()).cloned().unwrap_or_default();
    if arch != "llama" {
        return Err(err(format!("{}: architecture {arch:?} is not llama", path.display())));
    }
    let vocab_size = content.metadata.get("tokenizer.ggml.tokens").and_then(|v| v.to_vec().ok()).map_or(0, |v| v.len());
    let heads = metadata_usize(content, "llama.attention.head_count")?;
    Ok(LlamaConfig {
        vocab_size,
        hidden_size: metadata_usize(content, "llama.embedding_length")?,
        intermediate_size: metadata_usize(content, "llama.feed_forward_length")?,
        num_hidden_layers: metadata_usize(content, "llama.block_count")?,
        num_attention_heads: heads,
        num_key_value_heads: metadata_usize(content, "llama.attention.head_count_kv").unwrap_or(heads),
        rms_norm_eps: metadata_f64(content, "llama.attention.layer_norm_rms_epsilon", 1e-5),
        rope_theta: metadata_f64(content, "llama.rope.freq_base", 10_000.0),
        max_position_embeddings: metadata_usize(content, "llama.context_length").unwrap_or(2048),
        tie_word_embeddings: !content.tensor_infos.contains_key("output.weight"),
        rope_scaling: None,
        bos_token_id: None,
        eos_token_id: None,
    })
}

fn load_gguf(path: &Path, device: &Device) -> anyhow::Result<(LlamaConfig, HashMap<String, Tensor>)> {
    let (mut file, content) = read_gguf(path)?;
    let config = gguf_config(path, &content)?;
    let (heads, kv_heads) = (config.num_attention_heads, config.num_key_value_heads);
    let mut tensors = HashMap::new();
    let names: Vec<String> = content.tensor_infos.keys().cloned().collect();
    for gguf_name in names {
        let tensor = content.tensor(&mut file, &gguf_name, device)?.dequantize(device)?.to_dtype(DType::F32)?;
        let hf_name = match gguf_name.as_str() {
            "token_embd.weight" => "model.embed_tokens.weight".to_string(),
            "output_norm.weight" => "model.norm.weight".to_string(),
            "output.weight" => "lm_head.weight".to_string(),
            other => {
                let Some(rest) = other.strip_prefix("blk.") else { continue };
                let (layer, part) = rest.split_once('.').ok_or_else(|| err(format!("unexpected tensor {other}")))?;
                let mapped = match part {
                    "attn_norm.weight" => "input_layernorm.weight",
                    "ffn_norm.weight" => "post_attention_layernorm.weight",
                    "attn_q.weight" => "self_attn.q_proj.weight",
                    "attn_k.weight" => "self_attn.k_proj.weight",
                    "attn_v.weight" => "self_attn.v_proj.weight",
                    "attn_output.weight" => "self_attn.o_proj.weight",
                    "ffn_gate.weight" => "mlp.gate_proj.weight",
                    "ffn_up.weight" => "mlp.up_proj.weight",
                    "ffn_down.weight" => "mlp.down_proj.weight",
                    _ => continue,
                };
                format!("model.layers.{layer}.{mapped}")
            }
        };
        let tensor = if hf_name.ends_with("q_proj.weight") {
            unpermute(&tensor, heads)?
        } else if hf_name.ends_with("k_proj.weight") {
            unpermute(&tensor, kv_heads)?
        } else {
            tensor
        };
        tensors.insert(hf_name, tensor);
    }
    Ok((config, tensors))
}
