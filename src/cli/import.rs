//! `understudy import traces FILE [--format F] [--json] [--background]` and
//! `understudy import dpo [FILE] [--json] [--background]` (spec 3.2; the file defaults to
//! `$COMMAND_CENTER_DIR/backend/rl/dpo_pairs.jsonl`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};

use super::print_json;
use super::progress::TerminalProgress;
use crate::config::Config;
use crate::jobs::import_dpo::ImportDpoParams;
use crate::jobs::import_traces::{ImportParams, ImportReport};
use crate::jobs::{run_foreground, submit, JobOutput, JobParams, JobRecord};
use crate::store::Store;
use crate::traces::formats::ImportFormat;

#[derive(Debug, Subcommand)]
pub enum ImportCommand {
    /// Import a JSONL file of traces (one record per line).
    Traces(ImportTracesArgs),
    /// Import Command Center preference pairs (DPO): each pair is stored and yields an SFT trace.
    Dpo(ImportDpoArgs),
}

/// Where the Command Center backend keeps its pairs, under `COMMAND_CENTER_DIR`.
pub const COMMAND_CENTER_PAIRS: &str = "backend/rl/dpo_pairs.jsonl";

#[derive(Debug, Args)]
pub struct ImportDpoArgs {
    /// The pairs file: JSONL (Command Center, continuous-RL or TRL rows) or one JSON array.
    /// Default: $COMMAND_CENTER_DIR/backend/rl/dpo_pairs.jsonl.
    pub file: Option<PathBuf>,
    /// The Command Center checkout whose backend/rl/dpo_pairs.jsonl is read when FILE is omitted.
    #[arg(long, env = "COMMAND_CENTER_DIR", value_name = "DIR")]
    pub command_center_dir: Option<PathBuf>,
    /// Print one JSON report on stdout.
    #[arg(long)]
    pub json: bool,
    /// Queue the import for a running server's job runner instead of running it here.
    #[arg(long)]
    pub background: bool,
}

impl ImportDpoArgs {
    /// The file to read: FILE, else the Command Center's pairs file.
    fn pairs_file(&self) -> anyhow::Result<PathBuf> {
        match (&self.file, &self.command_center_dir) {
            (Some(file), _) => Ok(file.clone()),
            (None, Some(dir)) if !dir.as_os_str().is_empty() => Ok(dir.join(COMMAND_CENTER_PAIRS)),
            _ => anyhow::bail!(
                "no pairs file: give FILE, or set COMMAND_CENTER_DIR (or --command-center-dir) to a Command Center checkout holding {COMMAND_CENTER_PAIRS}"
            ),
        }
    }
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
        ImportCommand::Dpo(args) => import_dpo_command(config, args),
    }
}

/// Refuse unreadable input before touching the store; the absolute path for the job.
fn readable_file(file: &Path) -> anyhow::Result<PathBuf> {
    let metadata = std::fs::metadata(file).with_context(|| format!("cannot read {}", file.display()))?;
    if metadata.is_dir() {
        anyhow::bail!("cannot read {}: it is a directory", file.display());
    }
    std::fs::canonicalize(file).with_context(|| format!("cannot read {}", file.display()))
}

fn import_dpo_command(config: &Config, args: ImportDpoArgs) -> anyhow::Result<ExitCode> {
    let file = args.pairs_file()?;
    if args.background {
        let params = ImportDpoParams { path: readable_file(&file)?, display_name: Some(file.display().to_string()) };
        let store = Store::open(config.data_dir())?;
        let db = store.connect()?;
        let id = submit(&db, &JobParams::ImportDpo(params))?;
        let job = db.get_job(&id)?.context("the queued job vanished")?;
        if args.json {
            print_json(&job)?;
        } else {
            println!(
                "queued {} (a running `understudy serve` picks it up; see `understudy jobs show {}`)",
                job.id, job.id
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let report = import_dpo_file(config, &file, args.json)?;
    if args.json {
        print_json(&report)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Import a preference-pair file in the foreground with a progress bar on stderr (also what
/// `bootstrap --dpo P` runs). With `json` false the counts and each rejected line are printed
/// on stdout; with `json` true nothing is printed, so the caller can put the report in its one
/// JSON document. Errors when the file cannot be read or the job does not succeed; rejected
/// lines are not errors.
pub fn import_dpo_file(config: &Config, path: &Path, json: bool) -> anyhow::Result<ImportReport> {
    let params = ImportDpoParams { path: readable_file(path)?, display_name: Some(path.display().to_string()) };
    let store = Store::open(config.data_dir())?;
    let bar = TerminalProgress::bytes("import dpo");
    let finished = run_foreground(&store, &JobParams::ImportDpo(params), Some(&bar))?;
    bar.finish();
    let report = finished_report(&finished)?;
    if !json {
        print_report(&finished, &report);
    }
    Ok(report)
}

fn import_traces(config: &Config, args: ImportTracesArgs) -> anyhow::Result<ExitCode> {
    // Refuse unreadable input before touching the store.
    let path = readable_file(&args.file)?;
    let store = Store::open(config.data_dir())?;
    let params = ImportParams { path, format: args.format.into(), display_name: Some(args.file.display().to_string()) };
    let db = store.connect()?;
    if args.background {
        let id = submit(&db, &JobParams::ImportTraces(params))?;
        let job = db.get_job(&id)?.context("the queued job vanished")?;
        if args.json {
            print_json(&job)?;
        } else {
            println!(
                "queued {} (a running `understudy serve` picks it up; see `understudy jobs show {}`)",
                job.id, job.id
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let bar = TerminalProgress::bytes("import");
    let finished = run_foreground(&store, &JobParams::ImportTraces(params), Some(&bar))?;
    bar.finish();
    report_import(&finished, args.json)
}

/// Print an import job's outcome; shared by `import traces`, `import dpo` and `jobs resume`.
pub fn report_import(job: &JobRecord, json: bool) -> anyhow::Result<ExitCode> {
    let report = finished_report(job)?;
    if json {
        print_json(&report)?;
    } else {
        print_report(job, &report);
    }
    Ok(ExitCode::SUCCESS)
}

/// The report of a succeeded import job; an error saying why otherwise.
fn finished_report(job: &JobRecord) -> anyhow::Result<ImportReport> {
    let (JobOutput::ImportTraces(report) | JobOutput::ImportDpo(report)) = job.output()? else {
        anyhow::bail!("job {} is not an import", job.id)
    };
    if report.imported + report.duplicates + report.rejected == 0 {
        eprintln!("warning: the file holds no records (it is empty or only blank lines)");
    }
    Ok(report.clone())
}

fn print_report(job: &JobRecord, report: &ImportReport) {
    println!("imported {}, duplicates {}, rejected {}", report.imported, report.duplicates, report.rejected);
    // Preference-pair imports name the file with each bad line (spec 3.2).
    let file = match &job.params {
        JobParams::ImportDpo(params) => params.display_name.as_deref(),
        _ => None,
    };
    for error in &report.errors {
        match file {
            Some(file) => println!("  {file}:{}: {}", error.line, error.reason),
            None => println!("  line {}: {}", error.line, error.reason),
        }
    }
    if report.rejected > report.errors.len() {
        println!("  ... and {} more rejected lines", report.rejected - report.errors.len());
    }
}
