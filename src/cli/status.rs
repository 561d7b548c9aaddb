//! `understudy status`: what the data dir holds.

use std::process::ExitCode;

use clap::Args;

use super::print_json;
use crate::config::Config;
use crate::store::Store;

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[arg(long)]
    pub json: bool,
}

pub fn run(config: &Config, args: StatusArgs) -> anyhow::Result<ExitCode> {
    let store = Store::open(config.data_dir())?;
    let db = store.connect()?;
    let counts = db.trace_counts()?;
    let jobs = db.count_jobs_by_status()?;
    if args.json {
        print_json(&serde_json::json!({
            "data_dir": config.data_dir().display().to_string(),
            "database": store.db_path().display().to_string(),
            "schema_version": db.schema_version()?,
            "traces": counts,
            "preference_pairs": db.count_pairs()?,
            "jobs": jobs.into_iter().collect::<std::collections::BTreeMap<_, _>>(),
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    println!("data dir   {}", config.data_dir().display());
    println!("database   {} (schema v{})", store.db_path().display(), db.schema_version()?);
    println!("traces     {}", counts.total);
    for (label, groups) in
        [("source", &counts.by_source), ("category", &counts.by_category), ("split", &counts.by_split)]
    {
        let parts: Vec<String> = groups.iter().map(|g| format!("{} {}", g.name, g.count)).collect();
        if !parts.is_empty() {
            println!("  by {label:<9} {}", parts.join(", "));
        }
    }
    println!("pairs      {}", db.count_pairs()?);
    let parts: Vec<String> = jobs.iter().map(|(status, n)| format!("{status} {n}")).collect();
    println!("jobs       {}", if parts.is_empty() { "none".to_string() } else { parts.join(", ") });
    Ok(ExitCode::SUCCESS)
}
