//! Export: a trained model (LoRA already merged by training) becomes one export directory —
//! an HF directory, one GGUF per quant written by our own writer, an Ollama Modelfile, a parity
//! report and `export.json` — staged under `<id>.partial` and renamed into place, so a killed
//! export leaves no partial file where a finished one is expected.

pub mod bench;
pub mod gguf;
pub mod manifest;
pub mod modelfile;
pub mod parity;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde_json::json;
use tokenizers::Tokenizer;

pub use crate::files::sha256_file;
pub use gguf::Quant;
pub use manifest::{ExportFile, ExportManifest, OllamaSettings, ParityCheck, ParityReport, MANIFEST_FILE};
pub use parity::ParityOptions;

use crate::model::chat_template::ChatTemplate;
use crate::model::generate::LoadedModel;
use crate::model::llama::LlamaConfig;
use crate::model::source::ModelSource;
use crate::model::weights;
use crate::traces::Trace;

/// What to export.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", content = "path", rename_all = "snake_case")]
pub enum ExportSource {
    /// A model directory written by training (config.json, model.safetensors, tokenizer.json,
    /// template.json).
    ModelDir(PathBuf),
    /// A pretrained model as `--model-path` names it (HF directory or GGUF file).
    External(PathBuf),
}

#[derive(Debug, Clone)]
/// Everything one export needs, resolved: the job layer builds it from `ExportParams`.
pub struct ExportPlan {
    pub export_id: String,
    pub source: ExportSource,
    pub quants: Vec<Quant>,
    pub name: String,
    pub model_id: Option<String>,
    pub dataset_id: Option<String>,
    pub run_id: Option<String>,
    /// `artifacts/exports`; the export goes to `<exports_dir>/<export_id>`.
    pub exports_dir: PathBuf,
    /// Held-out traces for the parity checks (their prompts for the generation checks).
    pub held_out: Vec<Trace>,
    pub parity: ParityOptions,
    /// The SYSTEM of the Modelfile.
    pub system: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{0}")]
    Gguf(#[from] gguf::GgufError),
    #[error("cancelled")]
    Cancelled,
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0:#}")]
    Other(#[from] anyhow::Error),
}

impl From<candle_core::Error> for ExportError {
    fn from(error: candle_core::Error) -> Self {
        ExportError::Other(error.into())
    }
}

/// A model in memory, ready to be written.
pub struct Bundle {
    pub config: LlamaConfig,
    pub tensors: HashMap<String, Tensor>,
    pub tokenizer: Tokenizer,
    pub template: ChatTemplate,
}

impl Bundle {
    pub fn load(source: &ExportSource) -> anyhow::Result<Bundle> {
        let device = Device::Cpu;
        match source {
            ExportSource::ModelDir(dir) => {
                let read = |name: &str| {
                    std::fs::read_to_string(dir.join(name))
                        .map_err(|e| anyhow::anyhow!("{}: {e}", dir.join(name).display()))
                };
                let config: LlamaConfig = serde_json::from_str(&read("config.json")?)?;
                let template: ChatTemplate = serde_json::from_str(&read("template.json")?)?;
                let tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
                    .map_err(|e| anyhow::anyhow!("{}: {e}", dir.join("tokenizer.json").display()))?;
                let mut tensors = candle_core::safetensors::load(dir.join("model.safetensors"), &device)?;
                for tensor in tensors.values_mut() {
                    *tensor = tensor.to_dtype(DType::F32)?;
                }
                Ok(Bundle { config, tensors, tokenizer, template })
            }
            ExportSource::External(path) => {
                let source = ModelSource::parse(&path.display().to_string())?;
                let (config, tensors) = weights::load(&source, &device)?;
                let (tokenizer, template) = source.tokenizer_and_template(|_| Vec::new())?;
                Ok(Bundle { config, tensors, tokenizer, template })
            }
        }
    }
}

/// The HF directory: config.json, model.safetensors, tokenizer.json, tokenizer_config.json with
/// the chat template and special tokens, generation_config.json with the end-of-turn ids, plus
/// our template.json so `generate` and the trainer can load it back as it is.
fn write_hf(dir: &Path, bundle: &Bundle) -> Result<(), ExportError> {
    std::fs::create_dir_all(dir)?;
    let id = |text: &str| (!text.is_empty()).then(|| bundle.tokenizer.token_to_id(text)).flatten();
    let end_ids: Vec<u32> = bundle.template.end_of_turn.iter().filter_map(|t| id(t)).collect();
    let eos = id(&bundle.template.eos_token).or(end_ids.first().copied());
    // As the GGUF writes it: the family's BOS, else <|endoftext|>, else the end of turn.
    let bos = id(&bundle.template.bos_token).or_else(|| id("<|endoftext|>")).or(eos);
    let pad = id("<|endoftext|>").or(eos);
    let mut config = serde_json::to_value(&bundle.config).map_err(anyhow::Error::from)?;
    let object = config.as_object_mut().expect("config is an object");
    object.insert("architectures".into(), json!(["LlamaForCausalLM"]));
    object.insert("model_type".into(), json!("llama"));
    object.insert("hidden_act".into(), json!("silu"));
    object.insert("head_dim".into(), json!(bundle.config.head_dim()));
    object.insert("torch_dtype".into(), json!("float32"));
    object.insert("bos_token_id".into(), json!(bos));
    object.insert("eos_token_id".into(), json!(eos));
    object.insert("pad_token_id".into(), json!(pad));
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&config).map_err(anyhow::Error::from)?)?;
    candle_core::safetensors::save(&bundle.tensors, dir.join("model.safetensors"))?;
    bundle.tokenizer.save(dir.join("tokenizer.json"), false).map_err(|e| anyhow::anyhow!("tokenizer.json: {e}"))?;
    // In id order, as Hugging Face writes it (the tokenizer hands them over in hash order).
    let decoder: std::collections::BTreeMap<u32, _> = bundle.tokenizer.get_added_tokens_decoder().into_iter().collect();
    let added: serde_json::Map<String, serde_json::Value> = decoder
        .into_iter()
        .map(|(id, token)| {
            (id.to_string(), json!({"content": token.content, "special": token.special, "lstrip": false, "rstrip": false, "normalized": false, "single_word": false}))
        })
        .collect();
    let text_or_null = |text: &str| if text.is_empty() { serde_json::Value::Null } else { json!(text) };
    let tokenizer_config = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "chat_template": bundle.template.source,
        "bos_token": text_or_null(&bundle.template.bos_token),
        "eos_token": text_or_null(&bundle.template.eos_token),
        "pad_token": pad.and_then(|p| bundle.tokenizer.id_to_token(p)),
        "unk_token": null,
        "add_bos_token": false,
        "add_eos_token": false,
        "clean_up_tokenization_spaces": false,
        "model_max_length": bundle.config.max_position_embeddings,
        "added_tokens_decoder": added,
    });
    std::fs::write(
        dir.join("tokenizer_config.json"),
        serde_json::to_string_pretty(&tokenizer_config).map_err(anyhow::Error::from)?,
    )?;
    let generation = json!({"bos_token_id": bos, "eos_token_id": end_ids, "pad_token_id": pad, "do_sample": false});
    std::fs::write(
        dir.join("generation_config.json"),
        serde_json::to_string_pretty(&generation).map_err(anyhow::Error::from)?,
    )?;
    std::fs::write(dir.join("chat_template.jinja"), &bundle.template.source)?;
    std::fs::write(
        dir.join("template.json"),
        serde_json::to_string_pretty(&bundle.template).map_err(anyhow::Error::from)?,
    )?;
    Ok(())
}

/// Progress of an export: a message, steps done and the total; an error stops it.
pub type Progress<'a> = dyn FnMut(&str, u64, u64) -> Result<(), ExportError> + 'a;

/// Write the export directory and run the parity checks. Returns the manifest (whose parity
/// may have failed: the caller records it and fails) and the directory.
pub fn export(plan: &ExportPlan, progress: &mut Progress<'_>) -> Result<(ExportManifest, PathBuf), ExportError> {
    let total = 3 + plan.quants.len() as u64 + 2;
    let mut step = 0u64;
    let mut advance = |message: &str, progress: &mut Progress<'_>| -> Result<(), ExportError> {
        step += 1;
        progress(message, step.min(total), total)
    };
    advance("loading the model", progress)?;
    let bundle = Bundle::load(&plan.source)?;
    bundle.config.validate().map_err(|e| anyhow::anyhow!("config.json: {e}"))?;
    for quant in &plan.quants {
        gguf::check_quant(&bundle.config, &bundle.tensors, *quant)?;
    }
    std::fs::create_dir_all(&plan.exports_dir)?;
    let final_dir = plan.exports_dir.join(&plan.export_id);
    let staging = staging_dir(&plan.exports_dir).join(&plan.export_id);
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    std::fs::create_dir_all(&staging)?;

    advance("writing the HF directory", progress)?;
    write_hf(&staging.join("hf"), &bundle)?;

    let provenance = gguf::Provenance {
        name: plan.name.clone(),
        export_id: plan.export_id.clone(),
        model_id: plan.model_id.clone(),
        dataset_id: plan.dataset_id.clone(),
        run_id: plan.run_id.clone(),
    };
    let stem = file_stem(&plan.name);
    let mut gguf_files: Vec<(Quant, PathBuf)> = Vec::new();
    for quant in &plan.quants {
        advance(&format!("writing the {} GGUF", quant.as_str()), progress)?;
        let path = staging.join(format!("{stem}-{}.gguf", quant.as_str()));
        gguf::write(&path, &bundle.config, &bundle.tensors, &bundle.tokenizer, &bundle.template, *quant, &provenance)?;
        gguf_files.push((*quant, path));
    }
    // Parity (b) compares an f32 GGUF with the trained weights; write one if none was asked for.
    let parity_f32 = match gguf_files.iter().find(|(q, _)| *q == Quant::F32) {
        Some((_, path)) => path.clone(),
        None => {
            let path = staging.join("parity-f32.tmp.gguf");
            gguf::write(
                &path,
                &bundle.config,
                &bundle.tensors,
                &bundle.tokenizer,
                &bundle.template,
                Quant::F32,
                &provenance,
            )?;
            path
        }
    };

    advance("parity: tokenization", progress)?;
    let trained = LoadedModel::from_tensors(
        bundle.config.clone(),
        bundle.tensors.clone(),
        bundle.tokenizer.clone(),
        bundle.template.clone(),
        &Device::Cpu,
    )?;
    let mut checks = vec![parity::tokenization(&trained, &parity_f32, &plan.held_out)];
    advance("parity: generation", progress)?;
    let quant_paths: Vec<(Quant, &Path)> = gguf_files.iter().map(|(q, p)| (*q, p.as_path())).collect();
    let mut note = |message: &str| tracing::debug!("export {}: {message}", plan.export_id);
    checks.extend(parity::generation_checks(
        &trained,
        &parity_f32,
        &quant_paths,
        &plan.held_out,
        &plan.parity,
        &mut note,
    )?);
    if parity_f32.file_name().is_some_and(|n| n == "parity-f32.tmp.gguf") {
        std::fs::remove_file(&parity_f32)?;
    }
    let report = ParityReport::new(checks);

    let settings = modelfile::settings(&bundle.template, &plan.system, bundle.config.max_position_embeddings);
    let modelfile_gguf = gguf_files
        .iter()
        .find(|(q, _)| *q == Quant::Q4KM)
        .or_else(|| gguf_files.first())
        .map(|(_, p)| p.file_name().unwrap_or_default().to_string_lossy().into_owned());
    if let Some(from) = &modelfile_gguf {
        std::fs::write(staging.join("Modelfile"), modelfile::render(from, &settings))?;
    }
    let mut files = Vec::new();
    for (quant, path) in &gguf_files {
        let (sha256, bytes) = sha256_file(path)?;
        let relative = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
        files.push(ExportFile {
            path: relative,
            format: "gguf".into(),
            quant: Some(quant.as_str().into()),
            sha256,
            bytes,
        });
    }
    let mut hf_names: Vec<String> = std::fs::read_dir(staging.join("hf"))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    hf_names.sort();
    for name in hf_names {
        let (sha256, bytes) = sha256_file(&staging.join("hf").join(&name))?;
        files.push(ExportFile { path: format!("hf/{name}"), format: "hf".into(), quant: None, sha256, bytes });
    }
    let manifest = ExportManifest {
        export_id: plan.export_id.clone(),
        model_id: plan.model_id.clone(),
        dataset_id: plan.dataset_id.clone(),
        run_id: plan.run_id.clone(),
        name: plan.name.clone(),
        files,
        modelfile: if modelfile_gguf.is_some() { "Modelfile".into() } else { String::new() },
        ollama: settings,
        parity: report,
        created_at: crate::traces::now_rfc3339(),
    };
    std::fs::write(staging.join(MANIFEST_FILE), serde_json::to_string_pretty(&manifest).map_err(anyhow::Error::from)?)?;
    advance("finishing", progress)?;
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir)?;
    }
    std::fs::rename(&staging, &final_dir)?;
    Ok((manifest, final_dir))
}

/// A file-name-safe form of the export name.
fn file_stem(name: &str) -> String {
    let stem: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' { c } else { '-' })
        .collect();
    if stem.is_empty() {
        "model".into()
    } else {
        stem
    }
}

/// Where exports are written before the rename: beside `exports/`, on the same file system,
/// so nothing under `exports/` is ever a partial file.
fn staging_dir(exports_dir: &Path) -> PathBuf {
    exports_dir.parent().unwrap_or(exports_dir).join(".staging")
}

/// Remove what exports that died part-way (kill -9) left in the staging area, except the
/// staging directories of exports still running (`keep`: their export ids).
pub fn clean_partial(exports_dir: &Path, keep: &[String]) {
    for entry in std::fs::read_dir(staging_dir(exports_dir)).into_iter().flatten().flatten() {
        if !keep.iter().any(|id| entry.file_name().to_string_lossy() == id.as_str()) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
