//! The export manifest (`export.json` in every export directory): what was written, with
//! digests, the Ollama parameters, and the parity report. Deploy reads only this file.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// One written file, relative to the export directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExportFile {
    /// Path relative to the export directory (`model-q8_0.gguf`, `hf/model.safetensors`).
    pub path: String,
    /// `gguf` or `hf`.
    pub format: String,
    /// `f32`, `f16`, `q8_0`, `q4_k_m` for GGUF files; null for HF files.
    pub quant: Option<String>,
    pub sha256: String,
    pub bytes: u64,
}

/// What Ollama needs besides the GGUF: the same values the Modelfile carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OllamaSettings {
    /// The TEMPLATE, in Ollama's Go template syntax.
    pub template: String,
    pub system: String,
    /// One entry per end-of-turn token.
    pub stop: Vec<String>,
    pub num_ctx: u32,
    pub temperature: f32,
}

/// One parity check (spec 3.9 a–d) and its outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ParityCheck {
    /// `tokenization`, `greedy_tokens`, `stops_at_end_of_turn`, `tool_call`, or
    /// `agreement:<quant>` (informational).
    pub name: String,
    pub passed: bool,
    /// Whether a failure fails the export.
    pub required: bool,
    /// What was compared and, on failure, where the first difference is.
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ParityReport {
    pub passed: bool,
    pub checks: Vec<ParityCheck>,
}

impl ParityReport {
    pub fn new(checks: Vec<ParityCheck>) -> ParityReport {
        ParityReport { passed: checks.iter().all(|c| c.passed || !c.required), checks }
    }

    /// The first required check that failed.
    pub fn first_failure(&self) -> Option<&ParityCheck> {
        self.checks.iter().find(|c| c.required && !c.passed)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExportManifest {
    pub export_id: String,
    /// The registered model exported, when it came from the store.
    pub model_id: Option<String>,
    pub dataset_id: Option<String>,
    pub run_id: Option<String>,
    /// The name given with `--name` (default: the model's name).
    pub name: String,
    pub files: Vec<ExportFile>,
    /// The Modelfile's path relative to the export directory.
    pub modelfile: String,
    pub ollama: OllamaSettings,
    pub parity: ParityReport,
    pub created_at: String,
}

pub const MANIFEST_FILE: &str = "export.json";

impl ExportManifest {
    pub fn read(export_dir: &Path) -> anyhow::Result<ExportManifest> {
        let path = export_dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    /// The GGUF to deploy: the requested quant, else the first GGUF written.
    pub fn gguf(&self, quant: Option<&str>) -> Option<&ExportFile> {
        let mut ggufs = self.files.iter().filter(|f| f.format == "gguf");
        match quant {
            Some(q) => ggufs.find(|f| f.quant.as_deref() == Some(q)),
            None => ggufs.next(),
        }
    }
}
