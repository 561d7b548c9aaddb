//! What a `--model` argument names — the `tiny` preset, a Hugging Face directory or a GGUF file —
//! and how to get its tokenizer and chat template. For `tiny` the tokenizer is trained on the
//! dataset's own text.

use std::path::{Path, PathBuf};

use tokenizers::Tokenizer;

use super::chat_template::ChatTemplate;
use super::tokenizer::{self, TokenizerError};

/// Vocabulary size of the `tiny` preset's trained tokenizer.
pub const TINY_VOCAB_SIZE: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", content = "path", rename_all = "snake_case")]
pub enum ModelSource {
    Tiny,
    HfDir(PathBuf),
    Gguf(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("--model {0}: no such file or directory (expected `tiny`, a Hugging Face directory or a .gguf file)")]
    Missing(String),
    #[error("--model {path}: {reason}")]
    Invalid { path: String, reason: String },
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
}

impl ModelSource {
    pub fn parse(text: &str) -> Result<ModelSource, SourceError> {
        if text == "tiny" {
            return Ok(ModelSource::Tiny);
        }
        let path = Path::new(text);
        if path.is_dir() {
            if !path.join("tokenizer.json").exists() {
                return Err(SourceError::Invalid {
                    path: text.into(),
                    reason: "the directory has no tokenizer.json".into(),
                });
            }
            return Ok(ModelSource::HfDir(path.to_path_buf()));
        }
        if path.is_file() {
            if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) {
                return Ok(ModelSource::Gguf(path.to_path_buf()));
            }
            return Err(SourceError::Invalid { path: text.into(), reason: "a model file must be a .gguf".into() });
        }
        Err(SourceError::Missing(text.into()))
    }

    pub fn label(&self) -> String {
        match self {
            ModelSource::Tiny => "tiny".into(),
            ModelSource::HfDir(path) | ModelSource::Gguf(path) => path.display().to_string(),
        }
    }

    /// The `tiny` preset's chat template: ChatML with one line per tool, so the task is not
    /// drowned in tool schemas (the tokenizer is trained on text rendered with it).
    pub fn tiny_template() -> ChatTemplate {
        ChatTemplate::chatml_compact()
    }

    /// The model's tokenizer and chat template; `tiny` trains its tokenizer on `corpus`.
    pub fn tokenizer_and_template(
        &self,
        corpus: impl Fn(&ChatTemplate) -> Vec<String>,
    ) -> Result<(Tokenizer, ChatTemplate), SourceError> {
        match self {
            ModelSource::Tiny => {
                let template = ModelSource::tiny_template();
                let texts = corpus(&template);
                let tokenizer = tokenizer::train_bpe(
                    texts.iter().map(String::as_str),
                    TINY_VOCAB_SIZE,
                    &template.special_tokens(),
                )?;
                Ok((tokenizer, template))
            }
            ModelSource::HfDir(dir) => {
                let tokenizer = tokenizer::load_json(&dir.join("tokenizer.json"))?;
                let config: serde_json::Value = std::fs::read_to_string(dir.join("tokenizer_config.json"))
                    .ok()
                    .and_then(|t| serde_json::from_str(&t).ok())
                    .unwrap_or_default();
                let token_text = |key: &str| -> String {
                    match &config[key] {
                        serde_json::Value::String(s) => s.clone(),
                        serde_json::Value::Object(o) => {
                            o.get("content").and_then(|c| c.as_str()).unwrap_or("").to_string()
                        }
                        _ => String::new(),
                    }
                };
                let own = config["chat_template"]
                    .as_str()
                    .map(str::to_string)
                    .or_else(|| std::fs::read_to_string(dir.join("chat_template.jinja")).ok());
                let template =
                    ChatTemplate::for_model(own.as_deref(), &token_text("bos_token"), &token_text("eos_token"));
                Ok((tokenizer, template))
            }
            ModelSource::Gguf(path) => {
                let content = tokenizer::read_gguf(path)?;
                let gguf = tokenizer::from_gguf(&content)?;
                let template = ChatTemplate::for_model(
                    gguf.chat_template.as_deref(),
                    gguf.bos_token.as_deref().unwrap_or(""),
                    gguf.eos_token.as_deref().unwrap_or(""),
                );
                Ok((gguf.tokenizer, template))
            }
        }
    }
}
