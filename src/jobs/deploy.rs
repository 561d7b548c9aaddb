//! The `deploy` job: register a stored export with Ollama (`crate::deploy::deploy`), report the
//! GGUF upload in bytes as the job's progress and each later stage as its message, and record
//! the deployment in the store. The result is the `DeployReport`.
//!
//! There is no checkpoint: deploying again is cheap and safe (Ollama skips a blob it already has,
//! and create/copy replace the names), so a resumed deploy starts over; its deployment row is
//! named after the job, so a deploy killed after recording it records it again in place. Cancel and shutdown are
//! honoured before the upload starts; once it runs, the HTTP calls finish or time out.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{JobContext, JobError};
use crate::deploy::{deploy, version_tag, DeployOptions, DeployReport};
use crate::export::ExportManifest;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeployParams {
    /// The `exports` row the deployment is recorded against.
    pub export_id: String,
    pub export_dir: PathBuf,
    /// The Ollama model name without tag.
    pub name: String,
    /// Ollama's address: a URL or host:port, as `OLLAMA_HOST` accepts.
    pub host: String,
    /// The GGUF quant to deploy; default: the export's first GGUF.
    pub quant: Option<String>,
    /// Send the sample prompt through `/api/chat` afterwards.
    pub test: bool,
}

/// The id of a deploy job's deployment row: derived from the job id, so a resumed job keeps it.
pub fn deployment_id(job_id: &str) -> String {
    format!("dep_{}", job_id.trim_start_matches("job_"))
}

/// Bytes as megabytes with one decimal, for progress messages.
fn megabytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

pub fn run(context: &mut JobContext<'_>, params: &DeployParams) -> Result<DeployReport, JobError> {
    let manifest = ExportManifest::read(&params.export_dir)
        .map_err(|e| JobError::Failed(format!("export {}: {e:#}", params.export_id)))?;
    if let Some(failed) = manifest.parity.first_failure() {
        return Err(JobError::Failed(format!(
            "export {} failed its parity check {} ({}); deploy an export that passed",
            params.export_id, failed.name, failed.detail
        )));
    }
    let options = DeployOptions {
        host: params.host.clone(),
        name: params.name.clone(),
        quant: params.quant.clone(),
        version_tag: version_tag(&manifest.export_id),
        test: params.test,
    };
    context.log(
        "info",
        &format!("deploy {} as {}:{} to {}", params.export_id, options.name, options.version_tag, options.host),
    )?;
    context.check_cancelled()?;

    let outcome = {
        // The deploy client's callback cannot fail, so a progress write that fails is dropped:
        // progress is advisory, and the job's end is recorded on a fresh connection anyway.
        let mut stage = String::new();
        let (mut done, mut total) = (0u64, 0u64);
        let mut report_progress = |name: &str, stage_done: u64, stage_total: u64| {
            let changed = name != stage;
            if changed {
                name.clone_into(&mut stage);
                let _ = context.log("info", name);
            }
            if matches!(name, "checking" | "uploading") {
                (done, total) = (stage_done, stage_total);
            }
            let message = match name {
                "uploading" => format!("uploading {} of {}", megabytes(done), megabytes(total)),
                other => other.to_string(),
            };
            let _ = context.progress(done, (total > 0).then_some(total), &message, changed);
        };
        deploy(Path::new(&params.export_dir), &manifest, &options, &mut report_progress)
    };
    let report = outcome.map_err(|e| JobError::Failed(e.to_string()))?;
    let result = serde_json::to_value(&report).expect("deploy report serialises");
    let deployment_id = deployment_id(context.job().id.as_str());
    context.db().insert_deployment(&deployment_id, &params.export_id, &report.host, &report.names, &result)?;
    context.log("info", &format!("deployed {} to {} ({deployment_id})", report.names.join(" and "), report.host))?;
    Ok(report)
}
