//! The `export` job: write an export directory (HF directory, GGUFs, Modelfile, parity report),
//! record it in the store, and fail with the first failed parity check when there is one. The
//! held-out traces for parity come from the store's test (then val) split, else from a seeded
//! bootstrap run, so an export of a bare base model still has prompts.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{JobContext, JobError};
use crate::bootstrap::generator::{generate, system_prompt};
use crate::bootstrap::workflows::builtin;
use crate::export::{self, ExportError, ExportPlan, ExportSource, ParityOptions, Quant};
use crate::store::{Db, TraceFilter};
use crate::traces::{Split, Trace};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExportParams {
    pub source: ExportSource,
    pub quants: Vec<Quant>,
    pub name: String,
    pub model_id: Option<String>,
    pub dataset_id: Option<String>,
    pub run_id: Option<String>,
    pub exports_dir: PathBuf,
    /// K: prompts for the generation parity checks.
    pub parity_prompts: usize,
    pub parity_max_tokens: usize,
}

/// The export id of an export job: derived from the job id, so a resumed job rewrites the same export.
pub fn export_id_of(job_id: &str) -> String {
    format!("exp_{}", job_id.trim_start_matches("job_").to_lowercase())
}

/// Up to `n` traces for the parity checks: the held-out test split, then val, then any stored
/// trace (a store with no held-out split, as after importing a handful of traces), then seeded
/// synthetic ones (an empty store).
fn held_out(db: &Db, n: usize) -> Result<Vec<Trace>, JobError> {
    let mut traces: Vec<Trace> = Vec::new();
    for split in [Some(Split::Test), Some(Split::Val), None] {
        let filter = TraceFilter { split, ..TraceFilter::default() };
        for summary in db.list_traces(&filter, n as i64, 0)? {
            if traces.len() < n && !traces.iter().any(|t| t.id == summary.id) {
                if let Some(trace) = db.get_trace(&summary.id)? {
                    traces.push(trace);
                }
            }
        }
    }
    let templates = builtin();
    let mut index = 0;
    while traces.len() < n && index < 4 * n as u64 {
        if let Ok(trace) = generate(&templates, 0x5eed_e790, index) {
            traces.push(trace);
        }
        index += 1;
    }
    Ok(traces)
}

/// One file of an export, with its absolute path.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExportedFile {
    pub path: PathBuf,
    pub format: String,
    pub quant: Option<String>,
    pub sha256: String,
    pub bytes: u64,
}

/// What an export reports (`export --json`): `{"export_id", "dir", "files", "modelfile", "parity"}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExportOutcome {
    pub export_id: String,
    pub dir: PathBuf,
    pub files: Vec<ExportedFile>,
    pub modelfile: Option<PathBuf>,
    pub parity: export::ParityReport,
}

impl ExportOutcome {
    pub fn new(manifest: &export::ExportManifest, dir: &std::path::Path) -> ExportOutcome {
        ExportOutcome {
            export_id: manifest.export_id.clone(),
            dir: dir.to_path_buf(),
            files: manifest
                .files
                .iter()
                .map(|f| ExportedFile {
                    path: dir.join(&f.path),
                    format: f.format.clone(),
                    quant: f.quant.clone(),
                    sha256: f.sha256.clone(),
                    bytes: f.bytes,
                })
                .collect(),
            modelfile: (!manifest.modelfile.is_empty()).then(|| dir.join(&manifest.modelfile)),
            parity: manifest.parity.clone(),
        }
    }
}

pub fn run(context: &mut JobContext<'_>, params: &ExportParams) -> Result<ExportOutcome, JobError> {
    let export_id = export_id_of(&context.job().id);
    let own_id = context.job().id.clone();
    let running: Vec<String> = context
        .db()
        .list_jobs(1000)?
        .iter()
        .filter(|j| j.kind == super::JobKind::Export && j.status == super::JobStatus::Running && j.id != own_id)
        .map(|j| export_id_of(&j.id))
        .collect();
    export::clean_partial(&params.exports_dir, &running);
    let held_out = held_out(context.db(), params.parity_prompts.max(8))?;
    let plan = ExportPlan {
        export_id: export_id.clone(),
        source: params.source.clone(),
        quants: params.quants.clone(),
        name: params.name.clone(),
        model_id: params.model_id.clone(),
        dataset_id: params.dataset_id.clone(),
        run_id: params.run_id.clone(),
        exports_dir: params.exports_dir.clone(),
        held_out,
        parity: ParityOptions {
            prompts: params.parity_prompts,
            max_tokens: params.parity_max_tokens,
            require_tool_call: params.run_id.is_some(),
        },
        system: system_prompt(),
    };
    context.log(
        "info",
        &format!(
            "export {export_id} of {:?} as {}",
            params.source,
            params.quants.iter().map(|q| q.as_str()).collect::<Vec<_>>().join(", ")
        ),
    )?;
    let outcome = {
        let mut progress = |message: &str, done: u64, total: u64| -> Result<(), ExportError> {
            let failed = |e: JobError| match e {
                JobError::Cancelled | JobError::Interrupted => ExportError::Cancelled,
                other => ExportError::Io(std::io::Error::other(other.to_string())),
            };
            context.progress(done, Some(total), message, true).map_err(failed)?;
            context.check_cancelled().map_err(failed)
        };
        export::export(&plan, &mut progress)
    };
    let (manifest, dir) = match outcome {
        Ok(done) => done,
        Err(ExportError::Cancelled) => return Err(JobError::Cancelled),
        Err(other) => return Err(JobError::Failed(other.to_string())),
    };
    let manifest_value = serde_json::to_value(&manifest).expect("manifest serialises");
    context.db().insert_export(
        &export_id,
        params.model_id.as_deref(),
        &params.name,
        &dir.display().to_string(),
        &manifest_value,
        manifest.parity.passed,
    )?;
    for check in &manifest.parity.checks {
        let level = if check.passed {
            "info"
        } else if check.required {
            "error"
        } else {
            "warn"
        };
        context.log(
            level,
            &format!("parity {}: {} — {}", check.name, if check.passed { "passed" } else { "FAILED" }, check.detail),
        )?;
    }
    if let Some(failed) = manifest.parity.first_failure() {
        return Err(JobError::Failed(format!(
            "parity check {} failed: {} (the export is kept at {} for inspection)",
            failed.name,
            failed.detail,
            dir.display()
        )));
    }
    Ok(ExportOutcome::new(&manifest, &dir))
}
