//! Checkpoints trained elsewhere, brought back as a model directory of ours (`models import`): a
//! Hugging Face LLaMA-family checkpoint (single or sharded safetensors, any float dtype) or a
//! PEFT LoRA adapter merged onto its base (`W += scale · B A`, scale `alpha / r`, or
//! `alpha / √r` with rsLoRA). Every tensor is checked against the shapes the config implies, the
//! tokenizer and chat template come with it (the handoff scripts save the dataset's), and the
//! directory is written whole or not at all. What the store records is the caller's business.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::Serialize;
use serde_json::Value;

use super::chat_template::ChatTemplate;
use super::llama::LlamaConfig;
use super::source::ModelSource;

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// A file or field of the checkpoint, and what is wrong with it.
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Candle(#[from] candle_core::Error),
}

fn invalid(path: &Path, reason: impl ToString) -> ImportError {
    ImportError::Invalid { path: path.display().to_string(), reason: reason.to_string() }
}

/// What kind of checkpoint was imported.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ImportedKind {
    /// Full weights.
    Full,
    /// A PEFT LoRA adapter merged onto `base`.
    PeftLora { base: String, r: usize, alpha: f64, scale: f64, merged: usize },
}

/// What `import` wrote.
#[derive(Debug, Clone, Serialize)]
pub struct Imported {
    pub kind: ImportedKind,
    pub dir: PathBuf,
    pub config: LlamaConfig,
    pub tensors: usize,
    pub parameters: usize,
    /// `understudy_handoff.json` of the checkpoint, when a handoff script wrote it.
    pub lineage: Option<Value>,
}

/// Read a Hugging Face config.json into our config: LLaMA-family only; transformers 5's
/// `rope_parameters` read as `rope_theta` / `rope_scaling`.
pub fn read_hf_config(dir: &Path) -> Result<LlamaConfig, ImportError> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| invalid(&path, e))?;
    let mut value: Value = serde_json::from_str(&text).map_err(|e| invalid(&path, e))?;
    let model_type = value["model_type"].as_str().unwrap_or_default().to_string();
    let llama = model_type == "llama"
        || value["architectures"].as_array().into_iter().flatten().any(|a| a == "LlamaForCausalLM");
    if !llama {
        return Err(invalid(
            &path,
            format!(
                "model_type {model_type:?}: Understudy imports LLaMA-family checkpoints only (model_type \"llama\")"
            ),
        ));
    }
    if let Some(parameters) = value.get("rope_parameters").cloned().filter(Value::is_object) {
        if value.get("rope_theta").is_none() {
            if let Some(theta) = parameters.get("rope_theta") {
                value["rope_theta"] = theta.clone();
            }
        }
        if parameters["rope_type"] == "llama3" && value.get("rope_scaling").is_none_or(Value::is_null) {
            value["rope_scaling"] = parameters;
        }
    }
    let config: LlamaConfig = serde_json::from_value(value).map_err(|e| invalid(&path, e))?;
    config.validate().map_err(|e| invalid(&path, e))?;
    if let Some(head_dim) = serde_json::from_str::<Value>(&text).ok().and_then(|v| v["head_dim"].as_u64()) {
        if head_dim as usize != config.head_dim() {
            return Err(invalid(
                &path,
                format!("head_dim {head_dim} is not hidden_size / num_attention_heads = {}", config.head_dim()),
            ));
        }
    }
    Ok(config)
}

/// Every tensor a LLaMA model of this config has, with its shape (Hugging Face names).
pub fn expected_shapes(config: &LlamaConfig) -> Vec<(String, Vec<usize>)> {
    let (hidden, inter, vocab) = (config.hidden_size, config.intermediate_size, config.vocab_size);
    let head_dim = config.head_dim();
    let (q, kv) = (config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim);
    let mut shapes = vec![("model.embed_tokens.weight".to_string(), vec![vocab, hidden])];
    for layer in 0..config.num_hidden_layers {
        let at = |name: &str| format!("model.layers.{layer}.{name}");
        shapes.extend([
            (at("input_layernorm.weight"), vec![hidden]),
            (at("post_attention_layernorm.weight"), vec![hidden]),
            (at("self_attn.q_proj.weight"), vec![q, hidden]),
            (at("self_attn.k_proj.weight"), vec![kv, hidden]),
            (at("self_attn.v_proj.weight"), vec![kv, hidden]),
            (at("self_attn.o_proj.weight"), vec![hidden, q]),
            (at("mlp.gate_proj.weight"), vec![inter, hidden]),
            (at("mlp.up_proj.weight"), vec![inter, hidden]),
            (at("mlp.down_proj.weight"), vec![hidden, inter]),
        ]);
    }
    shapes.push(("model.norm.weight".to_string(), vec![hidden]));
    if !config.tie_word_embeddings {
        shapes.push(("lm_head.weight".to_string(), vec![vocab, hidden]));
    }
    shapes
}

fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>, ImportError> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| invalid(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .filter(|p| !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("adapter_model")))
        .collect();
    files.sort();
    Ok(files)
}

/// The tensors of a checkpoint directory (every *.safetensors shard), as f32.
fn load_tensors(dir: &Path, device: &Device) -> Result<HashMap<String, Tensor>, ImportError> {
    let files = safetensors_files(dir)?;
    if files.is_empty() {
        let has_bin = std::fs::read_dir(dir)?.filter_map(Result::ok).any(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            name.ends_with(".bin") || name.ends_with(".pt")
        });
        let reason = if has_bin {
            "only PyTorch .bin weights: save them as safetensors (save_pretrained(..., safe_serialization=True))"
        } else {
            "no weights (*.safetensors)"
        };
        return Err(invalid(dir, reason));
    }
    let mut tensors = HashMap::new();
    for file in files {
        for (name, tensor) in candle_core::safetensors::load(&file, device).map_err(|e| invalid(&file, e))? {
            tensors.insert(name, tensor.to_dtype(DType::F32)?);
        }
    }
    Ok(tensors)
}

/// Keep exactly the tensors the config implies, each with its shape; name what is missing or
/// does not fit.
fn checked(
    dir: &Path,
    config: &LlamaConfig,
    mut tensors: HashMap<String, Tensor>,
) -> Result<HashMap<String, Tensor>, ImportError> {
    let mut kept = HashMap::new();
    for (name, shape) in expected_shapes(config) {
        let tensor = tensors.remove(&name).ok_or_else(|| invalid(dir, format!("tensor {name} is missing")))?;
        if tensor.dims() != shape.as_slice() {
            return Err(invalid(
                dir,
                format!("tensor {name} has shape {:?}, the config implies {shape:?}", tensor.dims()),
            ));
        }
        kept.insert(name, tensor);
    }
    Ok(kept)
}

/// A PEFT adapter merged onto its base's weights.
fn merge_adapter(
    adapter_dir: &Path,
    base_tensors: &mut HashMap<String, Tensor>,
    device: &Device,
) -> Result<(usize, f64, f64, usize), ImportError> {
    let config_path = adapter_dir.join("adapter_config.json");
    let text = std::fs::read_to_string(&config_path).map_err(|e| invalid(&config_path, e))?;
    let config: Value = serde_json::from_str(&text).map_err(|e| invalid(&config_path, e))?;
    if config["peft_type"].as_str().is_some_and(|t| t != "LORA") {
        return Err(invalid(
            &config_path,
            format!("peft_type {}: only LORA adapters can be merged", config["peft_type"]),
        ));
    }
    let r = config["r"]
        .as_u64()
        .filter(|r| *r > 0)
        .ok_or_else(|| invalid(&config_path, "r: expected a positive integer"))? as usize;
    let alpha = config["lora_alpha"].as_f64().ok_or_else(|| invalid(&config_path, "lora_alpha: expected a number"))?;
    for field in ["rank_pattern", "alpha_pattern"] {
        if config[field].as_object().is_some_and(|m| !m.is_empty()) {
            return Err(invalid(&config_path, format!("{field}: per-module ranks are not supported")));
        }
    }
    if config["fan_in_fan_out"].as_bool() == Some(true) {
        return Err(invalid(&config_path, "fan_in_fan_out: true is not supported (LLaMA layers are Linear)"));
    }
    let scale = if config["use_rslora"].as_bool() == Some(true) { alpha / (r as f64).sqrt() } else { alpha / r as f64 };
    let weights_path = adapter_dir.join("adapter_model.safetensors");
    if !weights_path.exists() {
        return Err(invalid(
            adapter_dir,
            "no adapter_model.safetensors (save the adapter with safe_serialization=True)",
        ));
    }
    let adapter = candle_core::safetensors::load(&weights_path, device).map_err(|e| invalid(&weights_path, e))?;
    let strip = |name: &str| name.strip_prefix("base_model.model.").unwrap_or(name).to_string();
    let adapter: HashMap<String, Tensor> = adapter
        .into_iter()
        .map(|(name, tensor)| Ok((strip(&name), tensor.to_dtype(DType::F32)?)))
        .collect::<Result<_, candle_core::Error>>()?;
    let mut merged = 0;
    let mut names: Vec<&String> = adapter.keys().collect();
    names.sort();
    for name in names {
        let tensor = &adapter[name];
        if let Some(prefix) = name.strip_suffix(".lora_A.weight") {
            let b_name = format!("{prefix}.lora_B.weight");
            let b = adapter.get(&b_name).ok_or_else(|| invalid(&weights_path, format!("{b_name} is missing")))?;
            let target = format!("{prefix}.weight");
            let weight = base_tensors
                .get(&target)
                .ok_or_else(|| invalid(&weights_path, format!("{name}: the base has no {target}")))?;
            let (out, inp) = weight.dims2()?;
            if tensor.dims() != [r, inp] || b.dims() != [out, r] {
                return Err(invalid(
                    &weights_path,
                    format!(
                        "{prefix}: lora_A {:?} and lora_B {:?} do not fit the base's {target} {:?} with r {r}",
                        tensor.dims(),
                        b.dims(),
                        weight.dims()
                    ),
                ));
            }
            let updated = (weight + (b.matmul(tensor)? * scale)?)?;
            base_tensors.insert(target, updated);
            merged += 1;
        } else if name.ends_with(".lora_B.weight") {
            continue;
        } else if let Some(existing) = base_tensors.get(name) {
            // modules_to_save: a full replacement of a base tensor.
            if existing.dims() != tensor.dims() {
                return Err(invalid(
                    &weights_path,
                    format!("{name} has shape {:?}, the base's {:?}", tensor.dims(), existing.dims()),
                ));
            }
            base_tensors.insert(name.clone(), tensor.clone());
        } else {
            return Err(invalid(&weights_path, format!("{name}: not a LoRA tensor nor a tensor of the base")));
        }
    }
    if merged == 0 {
        return Err(invalid(&weights_path, "no lora_A/lora_B pairs"));
    }
    Ok((r, alpha, scale, merged))
}

/// The directory holding the tokenizer and template: the checkpoint's own, else the base's.
fn tokenizer_dir<'a>(source: &'a Path, base: Option<&'a Path>) -> Result<&'a Path, ImportError> {
    if source.join("tokenizer.json").exists() {
        return Ok(source);
    }
    match base {
        Some(base) if base.join("tokenizer.json").exists() => Ok(base),
        _ => Err(invalid(source, "no tokenizer.json (save the tokenizer beside the weights)")),
    }
}

/// The chat template the model was trained with: our template.json (the handoff scripts copy
/// the dataset's), else whatever the directory's tokenizer_config.json or chat_template.jinja say.
pub fn template_of(dir: &Path) -> Result<ChatTemplate, ImportError> {
    let ours = dir.join("template.json");
    if ours.exists() {
        let text = std::fs::read_to_string(&ours)?;
        return serde_json::from_str(&text).map_err(|e| invalid(&ours, e));
    }
    let source = ModelSource::HfDir(dir.to_path_buf());
    let (_, template) = source.tokenizer_and_template(|_| Vec::new()).map_err(|e| invalid(dir, e))?;
    Ok(template)
}

/// Import `source` (an HF checkpoint or a PEFT adapter directory; `base` for an adapter whose
/// adapter_config.json names no local base) into `out_dir`, written whole or not at all.
pub fn import(source: &Path, base: Option<&Path>, out_dir: &Path) -> Result<Imported, ImportError> {
    let device = Device::Cpu;
    if !source.is_dir() {
        return Err(invalid(
            source,
            "not a directory (expected a Hugging Face checkpoint or a PEFT adapter directory)",
        ));
    }
    let adapter = source.join("adapter_config.json").exists();
    let (config, tensors, kind, base_dir) = if adapter {
        let config_path = source.join("adapter_config.json");
        let adapter_config: Value =
            serde_json::from_str(&std::fs::read_to_string(&config_path)?).map_err(|e| invalid(&config_path, e))?;
        let named = adapter_config["base_model_name_or_path"].as_str().map(PathBuf::from);
        let base_dir = match (base, named) {
            (Some(base), _) => base.to_path_buf(),
            (None, Some(named)) if named.is_dir() => named,
            (None, named) => {
                return Err(invalid(
                    &config_path,
                    format!(
                        "the adapter's base {} is not a directory here: pass --base with the base model's directory",
                        named.map_or("(none named)".to_string(), |n| format!("{:?}", n.display().to_string()))
                    ),
                ))
            }
        };
        if !base_dir.is_dir() {
            return Err(invalid(&base_dir, "the adapter's base is missing (not a directory)"));
        }
        let config = read_hf_config(&base_dir)?;
        let mut tensors = checked(&base_dir, &config, load_tensors(&base_dir, &device)?)?;
        let (r, alpha, scale, merged) = merge_adapter(source, &mut tensors, &device)?;
        let kind = ImportedKind::PeftLora { base: base_dir.display().to_string(), r, alpha, scale, merged };
        (config, tensors, kind, Some(base_dir))
    } else {
        let config = read_hf_config(source)?;
        let tensors = checked(source, &config, load_tensors(source, &device)?)?;
        (config, tensors, ImportedKind::Full, None)
    };
    let tokenizer_from = tokenizer_dir(source, base_dir.as_deref())?;
    let tokenizer_path = tokenizer_from.join("tokenizer.json");
    let tokenizer = tokenizers::Tokenizer::from_file(&tokenizer_path).map_err(|e| invalid(&tokenizer_path, e))?;
    let vocab = tokenizer.get_vocab_size(true);
    if vocab > config.vocab_size {
        return Err(invalid(
            &tokenizer_path,
            format!("{vocab} tokens, more than the model's vocab_size {}", config.vocab_size),
        ));
    }
    let template = if source.join("template.json").exists() || source.join("tokenizer_config.json").exists() {
        template_of(source)?
    } else {
        template_of(tokenizer_from)?
    };
    for tensor in tensors.values() {
        let sum = tensor.sum_all()?.to_scalar::<f32>()?;
        if !sum.is_finite() {
            return Err(invalid(source, "the weights hold NaN or infinite values"));
        }
    }
    let lineage = std::fs::read_to_string(source.join("understudy_handoff.json"))
        .ok()
        .and_then(|text| serde_json::from_str::<Value>(&text).ok());

    let staging = out_dir.with_extension("partial");
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    std::fs::create_dir_all(&staging)?;
    let written = (|| -> Result<(), ImportError> {
        candle_core::safetensors::save(&tensors, staging.join("model.safetensors"))?;
        std::fs::write(
            staging.join("config.json"),
            serde_json::to_string_pretty(&config).map_err(|e| invalid(source, e))?,
        )?;
        std::fs::copy(&tokenizer_path, staging.join("tokenizer.json"))?;
        std::fs::write(staging.join("chat_template.jinja"), &template.source)?;
        std::fs::write(
            staging.join("template.json"),
            serde_json::to_string_pretty(&template).map_err(|e| invalid(source, e))?,
        )?;
        if let Some(lineage) = &lineage {
            std::fs::write(
                staging.join("understudy_handoff.json"),
                serde_json::to_string_pretty(lineage).unwrap_or_default(),
            )?;
        }
        Ok(())
    })();
    if let Err(error) = written {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(error);
    }
    if out_dir.exists() {
        std::fs::remove_dir_all(out_dir)?;
    }
    std::fs::rename(&staging, out_dir)?;
    let parameters = tensors.values().map(Tensor::elem_count).sum();
    Ok(Imported { kind, dir: out_dir.to_path_buf(), config, tensors: tensors.len(), parameters, lineage })
}
