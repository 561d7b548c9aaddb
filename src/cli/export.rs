//! `understudy export [--model M | --model-path P] [--quant Q]... [--name N] [--json]`: write the
//! HF directory, one GGUF per quant, the Modelfile and the parity report, as a foreground job.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::progress::TerminalProgress;
use super::{flag_error, print_json};
use crate::config::Config;
use crate::jobs::export::ExportOutcome;
use crate::jobs::requests::{ExportRequest, ExportTarget};
use crate::jobs::{run_foreground, JobOutput, JobParams, JobRecord};
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
    let store = Store::open(config.data_dir())?;
    let db = store.connect()?;
    // An export killed with its process is still `running`: mark it interrupted, so its
    // staging directory is known to be dead and gets cleaned.
    db.mark_orphaned_jobs_interrupted(crate::jobs::other_process_is_alive)?;
    let target = match &args.model_path {
        Some(path) => ExportTarget::External(path.clone()),
        None => ExportTarget::Stored(args.model.clone().unwrap_or_else(|| "latest".into())),
    };
    let request = ExportRequest {
        parity_prompts: args.parity_prompts,
        parity_max_tokens: args.parity_max_tokens,
        ..ExportRequest::new(target, args.quants.clone(), args.name.clone())
    };
    let params = request.resolve(&db, config).map_err(flag_error)?;
    let bar = TerminalProgress::count("export");
    let finished = run_foreground(&store, &JobParams::Export(params), Some(&bar))?;
    bar.finish();
    report_export(&store, &finished, args.json)
}

/// Print an export's outcome; shared with `jobs resume`. A failed parity check still prints
/// the report (with `"passed": false`) before the error.
pub fn report_export(store: &Store, job: &JobRecord, json: bool) -> anyhow::Result<ExitCode> {
    let outcome = match job.output() {
        Ok(JobOutput::Export(outcome)) => outcome,
        Ok(_) => anyhow::bail!("job {} is not an export", job.id),
        Err(unfinished) => {
            let export_id = crate::jobs::export::export_id_of(&job.id);
            if let Some(row) = store.connect()?.get_export(&export_id)? {
                let manifest: crate::export::ExportManifest = serde_json::from_value(row.manifest)?;
                let outcome = ExportOutcome::new(&manifest, std::path::Path::new(&row.path));
                if json {
                    print_json(&outcome)?;
                } else {
                    print_parity(&outcome);
                }
            }
            return Err(unfinished.into());
        }
    };
    if json {
        print_json(outcome)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!("export {}  {}", outcome.export_id, outcome.dir.display());
    for file in outcome.files.iter().filter(|f| f.format == "gguf") {
        println!("  {}  {} bytes  sha256 {}", file.path.display(), file.bytes, file.sha256);
    }
    if let Some(modelfile) = &outcome.modelfile {
        println!("  Modelfile {}", modelfile.display());
    }
    print_parity(outcome);
    Ok(ExitCode::SUCCESS)
}

fn print_parity(outcome: &ExportOutcome) {
    for check in &outcome.parity.checks {
        let mark = if check.passed {
            "ok  "
        } else if check.required {
            "FAIL"
        } else {
            "warn"
        };
        println!("  parity {mark} {:<22} {}", check.name, check.detail);
    }
}
