//! The command line: flags parsed once (clap) and turned into `Config`, then one function per
//! subcommand. All user-facing terminal output lives here; `--json` prints exactly one JSON
//! document on stdout and everything else goes to stderr. Errors map to exit codes here only.

mod bench;
mod bootstrap;
mod capture;
mod dataset;
mod deploy;
mod engine;
mod eval;
mod export;
mod generate;
mod handoff;
mod import;
mod jobs;
mod models;
mod orchestrator;
mod progress;
mod serve;
mod status;
mod templates;
mod traces;
mod train;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Config;

#[derive(Debug, Parser)]
#[command(name = "understudy", version, about = "Turn a coding agent's tool-using traces into a local model")]
pub struct Cli {
    /// Directory holding understudy.db and artifacts/.
    #[arg(long, global = true, env = "UNDERSTUDY_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate executable synthetic traces (and import Command Center pairs).
    Bootstrap(bootstrap::BootstrapArgs),
    /// Build a versioned dataset (rendered, tokenized, masked) from the stored traces and pairs.
    BuildDataset(dataset::BuildArgs),
    /// Train a model (SFT today) as a resumable run.
    Train(train::TrainArgs),
    /// Score a model (or any OpenAI-compatible endpoint) on executed held-out tasks.
    Eval(eval::EvalArgs),
    /// Write an HF directory, GGUF files, an Ollama Modelfile and a parity report.
    Export(export::ExportArgs),
    /// A ready-to-run TRL/Accelerate/DeepSpeed (or Axolotl) directory for a dataset, for training elsewhere.
    Handoff(handoff::HandoffArgs),
    /// List trained models; import one trained elsewhere; promote a champion (by hand or by rule).
    #[command(subcommand)]
    Models(models::ModelsCommand),
    /// One reply from a trained model, with tool calls parsed.
    Generate(generate::GenerateArgs),
    /// List or show built datasets.
    #[command(subcommand)]
    Datasets(dataset::DatasetsCommand),
    /// List or export the workflow templates.
    #[command(subcommand)]
    Templates(templates::TemplatesCommand),
    /// Import traces from a file.
    #[command(subcommand)]
    Import(import::ImportCommand),
    /// Turn Claude Code session transcripts into traces.
    #[command(subcommand)]
    Capture(capture::CaptureCommand),
    /// Run the capture watcher in the background; install its Claude Code hook.
    #[command(subcommand)]
    Engine(engine::EngineCommand),
    /// List, show, export and delete stored traces.
    #[command(subcommand)]
    Traces(traces::TracesCommand),
    /// List, show, cancel and resume background jobs.
    #[command(subcommand)]
    Jobs(jobs::JobsCommand),
    /// Serve the web UI and the API.
    Serve(serve::ServeArgs),
    /// Run every pipeline stage that exists on the embedded default, then serve.
    Quickstart(serve::ServeArgs),
    /// Retrain as traces accumulate: cycles of dataset, SFT, RL, eval, promotion, export, deploy.
    #[command(subcommand)]
    Orchestrator(orchestrator::OrchestratorCommand),
    /// Register an export with Ollama (blob, create, tag latest; --test chats once).
    Deploy(deploy::DeployArgs),
    /// Show what the data dir holds.
    Status(status::StatusArgs),
    /// Benchmarks that print their figures as JSON.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

/// Entry point used by `main`: parse, run, map the outcome to an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve(_) | Command::Quickstart(_)) {
        // Like other Unix tools, end quietly when the reader of our output goes away
        // (`understudy traces list | head`) instead of panicking on a broken pipe.
        #[cfg(unix)]
        // Safety: restoring the default disposition of SIGPIPE before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    init_tracing();
    if std::env::var_os("UNDERSTUDY_FUSED").is_some_and(|v| v == "0") {
        crate::model::ops::set_fused(false);
    }
    let config = Config::new(cli.data_dir.clone());
    match run(&config, cli.command) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {}", one_line(&error));
            ExitCode::FAILURE
        }
    }
}

fn run(config: &Config, command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Bootstrap(args) => bootstrap::run(config, args),
        Command::Templates(command) => templates::run(config, command),
        Command::BuildDataset(args) => dataset::build(config, args),
        Command::Train(args) => train::run(config, args),
        Command::Generate(args) => generate::run(config, args),
        Command::Export(args) => export::run(config, args),
        Command::Eval(args) => eval::run(config, args),
        Command::Handoff(args) => handoff::run(config, args),
        Command::Models(command) => models::run(config, command),
        Command::Datasets(command) => dataset::run(config, command),
        Command::Bench(command) => bench::run(config, command),
        Command::Import(command) => import::run(config, command),
        Command::Capture(command) => capture::run(config, command),
        Command::Engine(command) => engine::run(config, command),
        Command::Traces(command) => traces::run(config, command),
        Command::Jobs(command) => jobs::run(config, command),
        Command::Serve(args) => serve::serve(config, args),
        Command::Quickstart(args) => serve::quickstart(config, args),
        Command::Deploy(args) => deploy::run(config, args),
        Command::Orchestrator(command) => orchestrator::run(config, command),
        Command::Status(args) => status::run(config, args),
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("UNDERSTUDY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("understudy=info,actix_web=warn"));
    let _ =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).try_init();
}

/// An error chain on one line.
fn one_line(error: &anyhow::Error) -> String {
    format!("{error:#}").replace('\n', " ")
}

/// Print exactly one JSON document on stdout.
fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// A request error as the command line says it: each field as its flag.
fn flag_error(error: crate::jobs::requests::RequestError) -> anyhow::Error {
    use crate::jobs::requests::RequestError;
    match error {
        RequestError::Invalid(fields) => {
            let flag = |field: &str| match field {
                "quants" => "quant".to_string(),
                "host" => "ollama-host".to_string(),
                "suites" => "suite".to_string(),
                "steps" => "max-steps".to_string(),
                other => other.replace('_', "-"),
            };
            let lines: Vec<String> = fields
                .iter()
                .map(|f| match &f.value {
                    Some(value) => format!("--{} {value}: {}", flag(f.field), f.message),
                    None => format!("--{}: {}", flag(f.field), f.message),
                })
                .collect();
            anyhow::anyhow!("{}", lines.join("; "))
        }
        other => other.into(),
    }
}
