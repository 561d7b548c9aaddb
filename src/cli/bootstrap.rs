//! `understudy bootstrap [--traces N] [--seed S] [--templates F] [--dpo P]`: add templates from a
//! file, generate executable synthetic traces as a foreground job with a progress bar, import
//! Command Center preference pairs, and print the statistics block (or one JSON document).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use super::progress::TerminalProgress;
use super::{flag_error, print_json};
use crate::bootstrap::workflows;
use crate::config::Config;
use crate::jobs::requests::BootstrapRequest;
use crate::jobs::{run_foreground, JobOutput, JobParams, JobRecord, JobStatus};
use crate::store::Store;

#[derive(Debug, Args)]
pub struct BootstrapArgs {
    /// How many traces to generate.
    #[arg(long, default_value_t = 500)]
    pub traces: u64,
    /// Seed for a reproducible run (a random one is chosen and printed otherwise).
    #[arg(long)]
    pub seed: Option<u64>,
    /// A JSON file of workflow templates to add or replace before generating.
    #[arg(long)]
    pub templates: Option<PathBuf>,
    /// Command Center DPO pairs to import too (default: $COMMAND_CENTER_DIR/backend/rl/dpo_pairs.jsonl when present).
    #[arg(long)]
    pub dpo: Option<PathBuf>,
    #[arg(long, env = "COMMAND_CENTER_DIR", hide = true)]
    pub command_center_dir: Option<PathBuf>,
    /// Only these templates (repeatable).
    #[arg(long = "template")]
    pub only: Vec<String>,
    #[arg(long)]
    pub json: bool,
}

pub fn run(config: &Config, args: BootstrapArgs) -> anyhow::Result<ExitCode> {
    let store = Store::open(config.data_dir())?;
    if let Some(path) = &args.templates {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let added = workflows::parse_file(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let db = store.connect()?;
        for template in &added {
            db.upsert_template(&template.name, &serde_json::to_string(template)?)?;
        }
        eprintln!("added or replaced {} template(s) from {}", added.len(), path.display());
    }
    let seed = args.seed.unwrap_or_else(|| u64::from(rand::random::<u32>()));
    if args.seed.is_none() {
        eprintln!("seed {seed} (pass --seed {seed} to reproduce this run)");
    }
    let request = BootstrapRequest { traces: args.traces, seed: Some(seed), templates: args.only.clone() };
    let params = request.resolve().map_err(flag_error)?;
    let bar = TerminalProgress::count("bootstrap");
    let finished = run_foreground(&store, &JobParams::Bootstrap(params), Some(&bar))?;
    bar.finish();

    let dpo_path = args.dpo.clone().or_else(|| {
        args.command_center_dir.as_ref().map(|dir| dir.join("backend/rl/dpo_pairs.jsonl")).filter(|p| p.exists())
    });
    let mut imported = 0;
    if let Some(path) = dpo_path {
        if finished.status == JobStatus::Succeeded {
            let report = super::import::import_dpo_file(config, &path, true)?;
            imported = report.imported as u64;
            eprintln!(
                "imported {} preference pairs from {} ({} duplicates, {} rejected)",
                report.imported,
                path.display(),
                report.duplicates,
                report.rejected
            );
            for error in report.errors.iter().take(20) {
                eprintln!("  {}:{}: {}", path.display(), error.line, error.reason);
            }
        }
    }
    report_bootstrap(&store, &finished, imported, args.json)
}

/// Print a bootstrap job's statistics; shared with `jobs resume`.
pub fn report_bootstrap(store: &Store, job: &JobRecord, imported: u64, json: bool) -> anyhow::Result<ExitCode> {
    let JobOutput::Bootstrap(report) = job.output()? else { anyhow::bail!("job {} is not a bootstrap", job.id) };
    let mut report = report.clone();
    report.imported = imported;
    report.total_traces = store.connect()?.count_traces(&Default::default())? as u64;
    if json {
        let mut value = serde_json::to_value(&report)?;
        value.as_object_mut().expect("report is an object").remove("failed");
        print_json(&value)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!("Bootstrap Statistics");
    println!("====================");
    println!("Synthetic traces:  {}", report.synthetic);
    println!("Imported (DPO):    {}", report.imported);
    println!("Duplicates:        {}", report.duplicates);
    if report.failed > 0 {
        println!("Failed:            {} (see `understudy jobs show {}`)", report.failed, job.id);
    }
    println!("Total traces:      {}", report.total_traces);
    println!("Time:              {:.2}s", report.seconds);
    println!("\nBy category:");
    for (category, n) in &report.by_category {
        println!("  {category:<20} {n:>6}");
    }
    println!("\nBy tool:");
    let mut tools: Vec<(&String, &u64)> = report.by_tool.iter().collect();
    tools.sort_by(|a, b| b.1.cmp(a.1));
    for (tool, n) in tools {
        println!("  {tool:<20} {n:>6}");
    }
    Ok(ExitCode::SUCCESS)
}
