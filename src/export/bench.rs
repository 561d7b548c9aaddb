//! The export benchmark: per quant, the time to write the GGUF, its size, and the share of
//! greedy tokens that agree with the f32 weights on N held-out prompts.

use std::path::Path;
use std::time::Instant;

use candle_core::Device;
use serde_json::{json, Value};

use super::gguf::{self, Provenance, Quant};
use super::{parity, Bundle, ExportSource};
use crate::model::generate::LoadedModel;
use crate::traces::Trace;

pub fn export(source: &ExportSource, prompts: &[Trace], max_tokens: usize, work_dir: &Path) -> anyhow::Result<Value> {
    let started = Instant::now();
    let bundle = Bundle::load(source)?;
    let load_seconds = started.elapsed().as_secs_f64();
    std::fs::create_dir_all(work_dir)?;
    let device = Device::Cpu;
    let reference_model = LoadedModel::from_tensors(
        bundle.config.clone(),
        bundle.tensors.clone(),
        bundle.tokenizer.clone(),
        bundle.template.clone(),
        &device,
    )?;
    let prompt_refs: Vec<&Trace> = prompts.iter().collect();
    let reference = parity::greedy(&reference_model, &prompt_refs, max_tokens)?;
    let provenance = Provenance { name: "bench".into(), export_id: "bench".into(), ..Provenance::default() };
    let mut rows = Vec::new();
    for quant in Quant::ALL {
        if let Err(refused) = gguf::check_quant(&bundle.config, &bundle.tensors, quant) {
            rows.push(json!({"quant": quant.as_str(), "refused": refused.to_string()}));
            continue;
        }
        let path = work_dir.join(format!("bench-{}.gguf", quant.as_str()));
        let started = Instant::now();
        gguf::write(&path, &bundle.config, &bundle.tensors, &bundle.tokenizer, &bundle.template, quant, &provenance)?;
        let write_seconds = started.elapsed().as_secs_f64();
        let bytes = std::fs::metadata(&path)?.len();
        let model = LoadedModel::load_path(&path, &device)?;
        let generations = parity::greedy(&model, &prompt_refs, max_tokens)?;
        let identical = reference.iter().zip(&generations).filter(|(a, b)| a.token_ids == b.token_ids).count();
        rows.push(json!({
            "quant": quant.as_str(),
            "write_seconds": write_seconds,
            "bytes": bytes,
            "megabytes": bytes as f64 / 1e6,
            "greedy_token_agreement": parity::agreement(&reference, &generations),
            "identical_continuations": identical,
        }));
        std::fs::remove_file(&path)?;
    }
    Ok(json!({
        "benchmark": "export",
        "parameters": bundle.tensors.values().map(|t| t.elem_count()).sum::<usize>(),
        "load_seconds": load_seconds,
        "prompts": prompts.len(),
        "max_tokens": max_tokens,
        "reference": "greedy tokens of the f32 weights in memory",
        "quants": rows,
    }))
}
