//! `understudy serve` and `understudy quickstart`.

use std::process::ExitCode;

use clap::Args;

use crate::config::{Config, ServeSettings};
use crate::jobs::import_traces::{params_value, ImportParams, ImportReport};
use crate::jobs::{run_job, JobKind, JobStatus};
use crate::store::Store;
use crate::traces::formats::ImportFormat;
use crate::web::Application;

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Bearer key for /api/ (required when listening off loopback).
    #[arg(long, env = "UNDERSTUDY_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}

/// Example traces shipped in the binary so a fresh data dir has something to look at.
const SAMPLE_TRACES: &str = include_str!("../traces/sample_traces.jsonl");

pub fn serve(config: &Config, args: ServeArgs) -> anyhow::Result<ExitCode> {
    let settings = ServeSettings::new(&args.host, args.port, args.api_key)?;
    let store = Store::open(config.data_dir())?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let application = Application::build(config.clone(), store, settings).await?;
        eprintln!("Understudy is serving on http://{}/ (Ctrl-C stops it)", application.address());
        application.run_until_stopped().await
    })?;
    Ok(ExitCode::SUCCESS)
}

pub fn quickstart(config: &Config, args: ServeArgs) -> anyhow::Result<ExitCode> {
    let store = Store::open(config.data_dir())?;
    eprintln!("[1/2] import the bundled example traces");
    let sample_path = config.artifacts_dir().join("sample_traces.jsonl");
    std::fs::create_dir_all(config.artifacts_dir())?;
    std::fs::write(&sample_path, SAMPLE_TRACES)?;
    let params = ImportParams { path: sample_path, format: ImportFormat::Canonical, display_name: Some("bundled examples".into()) };
    let job = store.connect()?.insert_job(JobKind::ImportTraces.as_str(), &params_value(&params), Some(std::process::id()))?;
    let job = run_job(&store, job, None)?;
    if job.status != JobStatus::Succeeded {
        anyhow::bail!("importing the examples failed: {}", job.error.unwrap_or_default());
    }
    let report: ImportReport = serde_json::from_value(job.result.unwrap_or_default())?;
    eprintln!("      {} imported, {} already there", report.imported, report.duplicates);
    eprintln!("[2/2] serve");
    serve(config, args)
}
