//! `understudy export [--model M | --model-path P] [--quant Q]... [--name N] [--json]`: write the
//! HF directory, one GGUF per quant, the Modelfile and the parity report, as a foreground job.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use super::print_json;
use super::progress::TerminalProgress;
use crate::config::Config;
use crate::export::{ExportSource, Quant};
use crate::jobs::export::{params_value, result_value, ExportParams};
use crate::jobs::{run_job, JobKind, JobRecord, JobStatus};
use crate::store::Store;

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// A model id (mdl_...) or `latest`.
    #[arg(long, conflicts_with = "model_path")]
    pub model: Option<String>,
    /// A model outside the store: an HF directory or a GGUF file.
    #[arg(long)]
    pub model_path: Option<PathBuf>,
    /// f32, f16, q8_0 or q4_k_m; repeat for several files.
    #[arg(long = "quant", default_values_t = vec!["q4_k_m".to_string()])]
    pub quants: Vec<String>,
    /// Name of the export (file names, GGUF general.name, Ollama model name suggestion).
    #[arg(long)]
    pub name: Option<String>,
    /// K: held-out prompts the generation parity checks use.
    #[arg(long, default_value_t = 4)]
    pub parity_prompts: usize,
    /// Tokens generated per parity prompt.
    #[arg(long, default_value_t = 64)]
    pub parity_max_tokens: usize,
    #[arg(long)]
    pub json: bool,
}

pub fn run(config: &Config, args: ExportArgs) -> anyhow::Result<ExitCode> {
    let mut quants = Vec::new();
    for text in &args.quants {
        let quant = Quant::parse(text).with_context(|| format!("--quant {text}: expected f32, f16, q8_0 or q4_k_m"))?;
        if !quants.contains(&quant) {
            quants.push(quant);
        }
    }
    let store = Store::open(config.data_dir())?;
    let db = store.connect()?;
    // An export killed with its process is still `running`: mark it interrupted, so its
    // staging directory is known to be dead and gets cleaned.
    db.mark_orphaned_jobs_interrupted(crate::jobs::other_process_is_alive)?;
    let (source, name, model_id, dataset_id, run_id) = match &args.model_path {
        Some(path) => {
            if !path.exists() {
                anyhow::bail!("--model-path {}: no such file or directory", path.display());
            }
            let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
            (ExportSource::External(path.clone()), stem, None, None, None)
        }
        None => {
            let wanted = args.model.as_deref().unwrap_or("latest");
            let row = if wanted == "latest" {
                db.list_models()?
                    .into_iter()
                    .next()
                    .context("no trained model yet: run `understudy train` first, or pass --model-path")?
            } else {
                db.get_model(wanted)?.with_context(|| format!("--model {wanted}: no such model id"))?
            };
            (
                ExportSource::ModelDir(PathBuf::from(&row.path)),
                row.name.clone(),
                Some(row.id),
                row.dataset_id,
                row.run_id,
            )
        }
    };
    let params = ExportParams {
        source,
        quants,
        name: args.name.clone().unwrap_or(name),
        model_id,
        dataset_id,
        run_id,
        exports_dir: config.artifacts_dir().join("exports"),
        parity_prompts: args.parity_prompts.max(1),
        parity_max_tokens: args.parity_max_tokens.max(1),
    };
    let job = db.insert_job(JobKind::Export.as_str(), &params_value(&params), Some(std::process::id()))?;
    let bar = TerminalProgress::count("export");
    let finished = run_job(&store, job, Some(&bar))?;
    bar.finish();
    report_export(&store, &finished, args.json)
}

/// Print an export's outcome; shared with `jobs resume`. A failed parity check still prints
/// the report (with `"passed": false`) before the error.
pub fn report_export(store: &Store, job: &JobRecord, json: bool) -> anyhow::Result<ExitCode> {
    let result = match job.status {
        JobStatus::Succeeded => job.result.clone().context("the export stored no result")?,
        _ => {
            let export_id = crate::jobs::export::export_id_of(&job.id);
            if let Some(row) = store.connect()?.get_export(&export_id)? {
                let manifest: crate::export::ExportManifest = serde_json::from_value(row.manifest)?;
                let value = result_value(&manifest, std::path::Path::new(&row.path));
                if json {
                    print_json(&value)?;
                } else {
                    print_parity(&value);
                }
            }
            super::finished_result(job, "export", "understudy jobs resume")?;
            unreachable!("finished_result fails for an unsuccessful job");
        }
    };
    if json {
        print_json(&result)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!("export {}  {}", result["export_id"].as_str().unwrap_or(""), result["dir"].as_str().unwrap_or(""));
    for file in result["files"].as_array().into_iter().flatten().filter(|f| f["format"] == "gguf") {
        println!(
            "  {}  {} bytes  sha256 {}",
            file["path"].as_str().unwrap_or(""),
            file["bytes"],
            file["sha256"].as_str().unwrap_or("")
        );
    }
    if let Some(modelfile) = result["modelfile"].as_str() {
        println!("  Modelfile {modelfile}");
    }
    print_parity(&result);
    Ok(ExitCode::SUCCESS)
}

fn print_parity(result: &serde_json::Value) {
    for check in result["parity"]["checks"].as_array().into_iter().flatten() {
        let mark = if check["passed"] == true {
            "ok  "
        } else if check["required"] == true {
            "FAIL"
        } else {
            "warn"
        };
        println!(
            "  parity {mark} {:<22} {}",
            check["name"].as_str().unwrap_or(""),
            check["detail"].as_str().unwrap_or("")
        );
    }
}
