//! Which models the endpoint serves and the loaded ones: the catalog is every export whose
//! parity passed (newest first) plus trained models not exported yet; the champion (the
//! champion model's newest export, else the newest export) answers to `understudy` and
//! `default`. Loaded models are shared `Arc`s cached by version, so swapping the champion never
//! drops a request in flight: it keeps its own `Arc` until it finishes. Exports run on
//! mistral.rs (`serve::mistral`); a trained model not exported yet runs on our own candle
//! decoder so it can be tried before export.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use candle_core::Device;
use tokenizers::Tokenizer;

use super::mistral::MistralRunner;
use crate::export::ExportManifest;
use crate::model::chat_template::ChatTemplate;
use crate::model::constrain::TokenBytes;
use crate::model::generate::LoadedModel;
use crate::model::llama::Llama;
use crate::model::source::ModelSource;
use crate::model::weights;
use crate::store::{ExportRow, ModelRow};

/// Names that always mean the current champion.
pub const CHAMPION_ALIASES: [&str; 2] = ["understudy", "default"];

/// GGUF quants in the order the engine prefers to serve them.
const SERVE_ORDER: [&str; 4] = ["q8_0", "f16", "f32", "q4_k_m"];

/// One servable model version.
#[derive(Debug, Clone, PartialEq)]
pub struct CatalogEntry {
    /// The model name clients send.
    pub name: String,
    /// The version: an export id, or a model id for a model not exported yet.
    pub version: String,
    /// A GGUF file or a model directory.
    pub path: PathBuf,
    pub created: i64,
    pub champion: bool,
    /// An export (served by mistral.rs) rather than a trained model not exported yet.
    pub exported: bool,
}

fn unix_seconds(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339).map(|t| t.timestamp()).unwrap_or(0)
}

/// The file an export is served from.
fn served_file(row: &ExportRow) -> Option<PathBuf> {
    let manifest: Option<ExportManifest> = serde_json::from_value(row.manifest.clone()).ok();
    let dir = Path::new(&row.path);
    manifest
        .and_then(|manifest| {
            SERVE_ORDER.iter().find_map(|quant| manifest.gguf(Some(quant))).map(|file| dir.join(&file.path))
        })
        .or_else(|| dir.join("hf").join("template.json").exists().then(|| dir.join("hf")))
}

/// The catalog, champion first. Several exports under one name: the newest answers to it. A
/// trained model counts as exported only through an export that passed parity and can be
/// served; otherwise it stays servable itself (on the candle decoder), so a failed export never
/// hides a model. The champion is its newest servable export, else the model itself.
pub fn catalog(exports: &[ExportRow], models: &[ModelRow]) -> Vec<CatalogEntry> {
    let champion_model = models.iter().find(|m| m.is_champion).map(|m| m.id.clone());
    let mut entries: Vec<CatalogEntry> = Vec::new();
    let mut exported: Vec<&str> = Vec::new();
    for row in exports.iter().filter(|e| e.parity_passed) {
        let Some(path) = served_file(row) else { continue };
        if let Some(model_id) = row.model_id.as_deref() {
            exported.push(model_id);
        }
        if entries.iter().any(|e| e.name == row.name) {
            continue;
        }
        entries.push(CatalogEntry {
            name: row.name.clone(),
            version: row.id.clone(),
            path,
            created: unix_seconds(&row.created_at),
            champion: false,
            exported: true,
        });
    }
    for model in models {
        if exported.contains(&model.id.as_str()) || entries.iter().any(|e| e.name == model.name) {
            continue;
        }
        entries.push(CatalogEntry {
            name: model.name.clone(),
            version: model.id.clone(),
            path: PathBuf::from(&model.path),
            created: unix_seconds(&model.created_at),
            champion: false,
            exported: false,
        });
    }
    let champion = champion_model
        .and_then(|id| {
            let export_name = exports
                .iter()
                .find(|e| e.parity_passed && e.model_id.as_deref() == Some(id.as_str()) && served_file(e).is_some())
                .map(|e| e.name.clone());
            match export_name {
                Some(name) => entries.iter().position(|e| e.name == name),
                None => entries.iter().position(|e| e.version == id),
            }
        })
        .unwrap_or(0);
    if let Some(entry) = entries.get_mut(champion) {
        entry.champion = true;
    }
    if champion > 0 {
        let entry = entries.remove(champion);
        entries.insert(0, entry);
    }
    entries
}

/// The entry a request's `model` names: a name, a version, or a champion alias.
pub fn resolve<'a>(catalog: &'a [CatalogEntry], requested: &str) -> Option<&'a CatalogEntry> {
    if CHAMPION_ALIASES.contains(&requested) {
        return catalog.first();
    }
    catalog.iter().find(|e| e.name == requested).or_else(|| catalog.iter().find(|e| e.version == requested))
}

/// What runs a loaded model's forward passes.
pub enum Runtime {
    /// An export on its own mistral.rs engine.
    MistralRs(MistralRunner),
    /// A model not exported yet, on our candle decoder.
    Candle(Llama),
}

impl Runtime {
    pub fn label(&self) -> &'static str {
        match self {
            Runtime::MistralRs(_) => "mistral.rs",
            Runtime::Candle(_) => "candle",
        }
    }
}

/// A loaded model version: the tokenizer and chat template requests are rendered with (the
/// ones training used) and the runtime that decodes.
pub struct ServedModel {
    pub name: String,
    pub version: String,
    pub tokenizer: Tokenizer,
    pub template: ChatTemplate,
    pub context_length: usize,
    pub vocab_size: usize,
    pub runtime: Runtime,
    /// Each token's bytes, read on the first constrained request.
    token_bytes: OnceLock<Arc<TokenBytes>>,
}

impl ServedModel {
    /// Load an entry: exports on mistral.rs scheduling up to `max_seqs` sequences together.
    pub fn load(entry: &CatalogEntry, max_seqs: usize) -> anyhow::Result<ServedModel> {
        let (name, version) = (entry.name.clone(), entry.version.clone());
        if !entry.exported {
            let loaded = LoadedModel::load_path(&entry.path, &Device::Cpu)?;
            let config = &loaded.model.config;
            let (context_length, vocab_size) = (config.max_position_embeddings, config.vocab_size);
            return Ok(ServedModel {
                name,
                version,
                tokenizer: loaded.tokenizer,
                template: loaded.template,
                context_length,
                vocab_size,
                runtime: Runtime::Candle(loaded.model),
                token_bytes: OnceLock::new(),
            });
        }
        let source = ModelSource::parse(&entry.path.display().to_string())?;
        let config = weights::read_config(&source)?;
        let (tokenizer, template) = match &source {
            // An export's HF directory carries the exact template training used.
            ModelSource::HfDir(dir) if dir.join("template.json").exists() => LoadedModel::tokenizer_and_template(dir)?,
            _ => source.tokenizer_and_template(|_| Vec::new())?,
        };
        let runner = MistralRunner::load(&entry.path, max_seqs)?;
        Ok(ServedModel {
            name,
            version,
            tokenizer,
            template,
            context_length: config.max_position_embeddings,
            vocab_size: config.vocab_size,
            runtime: Runtime::MistralRs(runner),
            token_bytes: OnceLock::new(),
        })
    }

    /// What each token id stands for in bytes, for constrained decoding.
    pub fn token_bytes(&self) -> Arc<TokenBytes> {
        Arc::clone(self.token_bytes.get_or_init(|| Arc::new(TokenBytes::new(&self.tokenizer, self.vocab_size))))
    }

    /// The ids that end a reply: the template's end-of-turn tokens.
    pub fn stop_ids(&self) -> Vec<u32> {
        self.template.end_of_turn.iter().filter_map(|t| self.tokenizer.token_to_id(t)).collect()
    }
}

/// Loaded models by version; the most recently used few stay loaded.
pub struct Registry {
    loaded: Mutex<Vec<Arc<ServedModel>>>,
    /// Sequences one mistral.rs engine schedules together.
    max_seqs: usize,
}

const KEEP_LOADED: usize = 3;

impl Registry {
    pub fn new(max_seqs: usize) -> Registry {
        Registry { loaded: Mutex::new(Vec::new()), max_seqs: max_seqs.max(1) }
    }

    /// The loaded model for an entry, loading it (blocking: call off the async workers).
    pub fn get(&self, entry: &CatalogEntry) -> anyhow::Result<Arc<ServedModel>> {
        if let Some(model) = self.find(&entry.version) {
            return Ok(model);
        }
        let model = ServedModel::load(entry, self.max_seqs)
            .map_err(|e| anyhow::anyhow!("loading {} ({}): {e:#}", entry.name, entry.path.display()))?;
        let model = Arc::new(model);
        let mut cache = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(existing) = cache.iter().find(|m| m.version == entry.version) {
            return Ok(Arc::clone(existing));
        }
        cache.insert(0, Arc::clone(&model));
        cache.truncate(KEEP_LOADED);
        Ok(model)
    }

    fn find(&self, version: &str) -> Option<Arc<ServedModel>> {
        let mut cache = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        let index = cache.iter().position(|m| m.version == version)?;
        let model = cache.remove(index);
        cache.insert(0, Arc::clone(&model));
        Some(model)
    }

    /// Versions currently loaded, most recent first.
    pub fn loaded_versions(&self) -> Vec<String> {
        self.loaded.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|m| m.version.clone()).collect()
    }
}

/// Names of loaded models by version, for the metrics page.
pub fn names(catalog: &[CatalogEntry]) -> HashMap<String, String> {
    catalog.iter().map(|e| (e.version.clone(), e.name.clone())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(id: &str, champion: bool) -> ModelRow {
        ModelRow {
            id: id.into(),
            name: format!("name-{id}"),
            base_model: "tiny".into(),
            parent_id: None,
            dataset_id: None,
            run_id: None,
            path: format!("/models/{id}"),
            is_champion: champion,
            metrics: serde_json::Value::Null,
            created_at: "2026-12-03T00:00:00Z".into(),
        }
    }

    /// An export whose HF directory exists (so it can be served) when `servable`.
    fn export(dir: &Path, id: &str, model_id: &str, parity_passed: bool) -> ExportRow {
        let path = dir.join(id);
        std::fs::create_dir_all(path.join("hf")).unwrap();
        std::fs::write(path.join("hf").join("template.json"), "{}").unwrap();
        ExportRow {
            id: id.into(),
            model_id: Some(model_id.into()),
            name: format!("export-{id}"),
            path: path.display().to_string(),
            manifest: serde_json::Value::Null,
            parity_passed,
            created_at: "2026-12-03T00:00:00Z".into(),
        }
    }

    #[test]
    fn a_model_whose_export_failed_parity_stays_servable_and_can_be_the_champion() {
        let dir = tempfile::tempdir().unwrap();
        let exports = [export(dir.path(), "exp_ok", "mdl_a", true), export(dir.path(), "exp_bad", "mdl_b", false)];
        let models = [model("mdl_a", false), model("mdl_b", true)];
        let catalog = catalog(&exports, &models);
        let versions: Vec<&str> = catalog.iter().map(|e| e.version.as_str()).collect();
        assert_eq!(versions, ["mdl_b", "exp_ok"], "mdl_b served itself, first as the champion");
        assert!(catalog[0].champion && !catalog[0].exported);
        assert_eq!(resolve(&catalog, "understudy").unwrap().version, "mdl_b");
    }

    #[test]
    fn the_champions_passing_export_answers_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let exports = [export(dir.path(), "exp_new", "mdl_b", true), export(dir.path(), "exp_old", "mdl_a", true)];
        let models = [model("mdl_b", false), model("mdl_a", true)];
        let catalog = catalog(&exports, &models);
        assert_eq!(catalog[0].version, "exp_old");
        assert!(catalog[0].champion && catalog[0].exported);
        assert_eq!(catalog.len(), 2, "exported models are not listed twice");
    }
}
