//! Export: a trained model (LoRA merged) becomes an HF directory, one GGUF per quant written by
//! our own writer, an Ollama Modelfile, and a parity report, in one atomic export directory.

pub mod manifest;

pub use manifest::{ExportFile, ExportManifest, OllamaSettings, ParityCheck, ParityReport};
