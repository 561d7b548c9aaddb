//! `understudy import traces FILE [--format F] [--json] [--background]`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};

use super::progress::TerminalProgress;
use super::print_json;
use crate::config::Config;
use crate::jobs::import_traces::{params_value, ImportParams, ImportReport};
use crate::jobs::{run_job, JobKind, JobStatus};
use crate::store::Store;
use crate::traces::formats::ImportFormat;

#[derive(Debug, Subcommand)]
pub enum ImportCommand {
    /// Import a JSONL file of traces (one record per line).
    Traces(ImportTracesArgs),
}

#[derive(Debug, Args)]
pub struct ImportTracesArgs {
    /// The JSONL file to read.
    pub file: PathBuf,
    /// Record shape: canonical (spec 2.1), openai ({"messages","tools"}) or sharegpt.
    #[arg(long, value_enum, default_value = "canonical")]
    pub format: FormatArg,
    /// Print one JSON report on stdout.
    #[arg(long)]
    pub json: bool,
    /// Queue the import for a running server's job runner instead of running it here.
    #[arg(long)]
    pub background: bool,
}

/// clap's spelling of the domain's `ImportFormat`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum FormatArg {
    Canonical,
    Openai,
    Sharegpt,
}

impl From<FormatArg> for ImportFormat {
    fn from(arg: FormatArg) -> Self {
        match arg {
            FormatArg::Canonical => ImportFormat::Canonical,
            FormatArg::Openai => ImportFormat::Openai,
            FormatArg::Sharegpt => ImportFormat::Sharegpt,
        }
    }
}

pub fn run(config: &Config, command: ImportCommand) -> anyhow::Result<ExitCode> {
    match command {
        ImportCommand::Traces(args) => import_traces(config, args),
    }
}

fn import_traces(config: &Config, args: ImportTracesArgs) -> anyhow::Result<ExitCode> {
    // Refuse unreadable input before touching the store.
    let metadata = std::fs::metadata(&args.file).with_context(|| format!("cannot read {}", args.file.display()))?;
    if metadata.is_dir() {
        anyhow::bail!("cannot read {}: it is a directory", args.file.display());
    }
    let path = std::fs::canonicalize(&args.file).with_context(|| format!("cannot read {}", args.file.display()))?;
    let store = Store::open(config.data_dir())?;
    let params = ImportParams {
        path,
        format: args.format.into(),
        display_name: Some(args.file.display().to_string()),
    };
    let db = store.connect()?;
    if args.background {
        let job = db.insert_job(JobKind::ImportTraces.as_str(), &params_value(&params), None)?;
        if args.json {
            print_json(&job)?;
        } else {
            println!("queued {} (a running `understudy serve` picks it up; see `understudy jobs show {}`)", job.id, job.id);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let job = db.insert_job(JobKind::ImportTraces.as_str(), &params_value(&params), Some(std::process::id()))?;
    let bar = TerminalProgress::bytes("import");
    let finished = run_job(&store, job, Some(&bar))?;
    bar.finish();
    report_import(&finished, args.json)
}

/// Print an import job's outcome; shared by `import traces` and `jobs resume`.
pub fn report_import(job: &crate::jobs::JobRecord, json: bool) -> anyhow::Result<ExitCode> {
    match job.status {
        JobStatus::Succeeded => {
            let report: ImportReport = serde_json::from_value(job.result.clone().unwrap_or_default())
                .context("the import job stored no report")?;
            if report.imported + report.duplicates + report.rejected == 0 {
                eprintln!("warning: the file holds no records (it is empty or only blank lines)");
            }
            if json {
                print_json(&report)?;
            } else {
                println!(
                    "imported {}, duplicates {}, rejected {}",
                    report.imported, report.duplicates, report.rejected
                );
                for error in &report.errors {
                    println!("  line {}: {}", error.line, error.reason);
                }
                if report.rejected > report.errors.len() {
                    println!("  ... and {} more rejected lines", report.rejected - report.errors.len());
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        JobStatus::Cancelled => {
            anyhow::bail!("import {} was cancelled; `understudy jobs resume {}` continues it", job.id, job.id)
        }
        _ => anyhow::bail!("{}", job.error.clone().unwrap_or_else(|| format!("import ended as {}", job.status.as_str()))),
    }
}
