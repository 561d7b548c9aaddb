//! `understudy serve` and `understudy quickstart`; `--orchestrator` runs the orchestrator inside
//! the server, `--continuous` also starts the capture watcher (the seed's hybrid mode).

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::Args;

use super::progress::TerminalProgress;
use crate::config::{Config, ServeSettings};
use crate::jobs::ProgressSink;
use crate::orchestrator::Background;
use crate::pipeline::{
    self, PipelineObserver, Recipe, Stage, StageReport, QUICKSTART_EXPORT, QUICKSTART_SEED, QUICKSTART_SFT_STEPS,
    QUICKSTART_TRACES,
};
use crate::store::Store;
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
    /// Token for the web UI and /api/ (required when listening off loopback); /v1 then takes the API key.
    #[arg(long, env = "UNDERSTUDY_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Where the Models page's Deploy button finds Ollama.
    #[arg(long, env = "OLLAMA_HOST")]
    pub ollama_host: Option<String>,
    #[arg(long, env = "CLAUDE_CONFIG_DIR", hide = true, value_name = "DIRS")]
    pub claude_config_dir: Option<String>,
    /// Requests decoded at once (mistral.rs schedules them together); more share the cores.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub engine_workers: u16,
    /// Requests waiting for a worker before the endpoint answers 429.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=4096))]
    pub queue_capacity: u16,
    /// Extra Host names a loopback server answers (comma-separated; requests naming any other
    /// host are refused, which stops DNS rebinding).
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    pub allowed_hosts: Vec<String>,
    /// Store each completed /v1/chat/completions conversation as a redacted `served` trace.
    #[arg(long)]
    pub record_traces: bool,
    /// Run the orchestrator inside the server: a cycle whenever enough new traces arrived
    /// (also on when `orchestrator config --run-in-serve true`).
    #[arg(long)]
    pub orchestrator: bool,
    /// The seed's hybrid mode: the orchestrator inside the server and the capture watcher
    /// beside it (on Claude Code's directory, or CLAUDE_CONFIG_DIR).
    #[arg(long)]
    pub continuous: bool,
}

pub fn serve(config: &Config, args: ServeArgs) -> anyhow::Result<ExitCode> {
    let mut settings = ServeSettings::new(&args.host, args.port, args.api_key)?.with_admin_token(args.admin_token)?;
    settings.ollama_host = args.ollama_host;
    settings.claude_settings = super::engine::settings_path(None, args.claude_config_dir.as_deref()).ok();
    settings.understudy_binary = std::env::current_exe().ok();
    settings.engine_workers = args.engine_workers.into();
    settings.queue_capacity = args.queue_capacity.into();
    settings.record_traces = args.record_traces;
    settings.allowed_hosts = args.allowed_hosts.clone();
    let record_traces = settings.record_traces;
    let store = Store::open(config.data_dir())?;
    if args.continuous {
        start_capture_watcher(config, args.claude_config_dir.clone());
    }
    let in_serve = args.orchestrator
        || args.continuous
        || crate::orchestrator::config::load(&store.connect()?).is_ok_and(|c| c.run_in_serve);
    let stop = Arc::new(AtomicBool::new(false));
    let orchestrator = if in_serve {
        let background = Background {
            store: store.clone(),
            config: config.clone(),
            default_ollama_host: crate::deploy::host_or_default(settings.ollama_host.clone()),
        };
        match background.spawn_loop(stop.clone()) {
            Ok(handle) => Some(handle),
            Err(error) => {
                eprintln!("orchestrator not started here: {error}");
                None
            }
        }
    } else {
        None
    };
    let result = Application::run_blocking(config.clone(), store, settings, |address| {
        eprintln!("Understudy is serving on http://{address}/ (Ctrl-C stops it)");
        eprintln!("  playground  http://{address}/playground");
        eprintln!("  OpenAI API  http://{address}/v1  (e.g. curl http://{address}/v1/models)");
        if record_traces {
            eprintln!("  recording   each completed chat completion is stored as a `served` trace (redacted)");
        }
        if in_serve {
            eprintln!("  orchestrator http://{address}/orchestrator  (retrains as traces arrive)");
        }
    });
    // The running job stops at its next check, resumable; its cycle continues at the next start.
    stop.store(true, Ordering::SeqCst);
    if let Some(handle) = orchestrator {
        let _ = handle.join();
    }
    result?;
    Ok(ExitCode::SUCCESS)
}

/// Start the capture watcher on Claude Code's directory for `--continuous` (a message, not an
/// error, when it cannot: the server still serves).
fn start_capture_watcher(config: &Config, claude_config_dir: Option<String>) {
    let capture = super::capture::CaptureArgs {
        dir: None,
        claude_config_dir,
        max_tool_result_bytes: crate::capture::DEFAULT_MAX_TOOL_RESULT_BYTES,
        redact: Vec::new(),
        no_default_redactions: false,
    };
    let started = capture.roots().and_then(|roots| {
        let binary = std::env::current_exe()?;
        let options = crate::capture::watcher::StartOptions::default();
        Ok(crate::capture::watcher::start(&binary, config.data_dir(), &roots, &options)?)
    });
    match started {
        Ok(crate::capture::watcher::StartOutcome::Started { pid_file, .. }) => {
            eprintln!("capture watcher started (pid {}); `understudy engine stop` ends it", pid_file.pid)
        }
        Ok(crate::capture::watcher::StartOutcome::AlreadyRunning(pid_file)) => {
            eprintln!("capture watcher already running (pid {})", pid_file.pid)
        }
        Err(error) => eprintln!("capture watcher not started: {error:#}"),
    }
}

/// Prints quickstart's numbered stage lines and one progress bar per stage.
struct QuickstartLines;

impl PipelineObserver for QuickstartLines {
    fn begin(&mut self, stage: Stage) -> Option<Box<dyn ProgressSink>> {
        let line = match stage {
            Stage::Bootstrap => format!("[1/6] bootstrap: {QUICKSTART_TRACES} executable synthetic traces (seed {QUICKSTART_SEED})"),
            Stage::Dataset => "[2/6] build-dataset: ChatML with one line per tool, a tokenizer trained for the tiny preset, assistant-only masks, first replies once more".into(),
            Stage::Train => format!("[3/6] train --phase sft: the tiny preset, {QUICKSTART_SFT_STEPS} steps of 4 on CPU (about 5 minutes on 2 cores)"),
            Stage::Select => return None,
            Stage::Export => "[4/6] export: HF directory, q8_0 and q4_k_m GGUF, Ollama Modelfile, parity checks".into(),
            Stage::Eval => "[5/6] eval: 100 held-out tasks run as agent episodes in the sandbox".into(),
        };
        eprintln!("{line}");
        Some(Box::new(TerminalProgress::count(stage.as_str())))
    }

    fn finished(&mut self, report: StageReport<'_>) {
        match report {
            StageReport::Bootstrap(report) => eprintln!(
                "      {} new traces, {} already there, {} in the store ({:.2}s)",
                report.synthetic, report.duplicates, report.total_traces, report.seconds
            ),
            StageReport::Dataset(dataset) => eprintln!(
                "      dataset {}: train {}, val {}, test {} examples ({} truncated, {} dropped)",
                dataset.id,
                dataset.counts.train,
                dataset.counts.val,
                dataset.counts.test,
                dataset.truncated,
                dataset.dropped
            ),
            StageReport::Train(run) => eprintln!(
                "      model {}: loss {:.3} -> {:.3}, {:.0} tokens/s",
                run.model_id, run.first_loss, run.final_loss, run.tokens_per_second
            ),
            StageReport::Select(selected) => {
                let scores: Vec<String> = selected
                    .scores
                    .iter()
                    .map(|(step, calls, prompts)| format!("step {step} {calls}/{prompts}"))
                    .collect();
                let kept = match selected.kept_step {
                    Some(step) if !selected.kept_final => format!("kept step {step}"),
                    _ => "kept the final step".into(),
                };
                eprintln!("      {kept} (validation prompts with a well-formed tool call: {})", scores.join(", "));
            }
            StageReport::Export(export) => {
                for check in &export.parity.checks {
                    eprintln!("      parity {:<22} {}", check.name, check.detail);
                }
                let modelfile = export.modelfile.as_ref().map_or("-".to_string(), |m| m.display().to_string());
                eprintln!("      Modelfile {modelfile}");
            }
            StageReport::Eval(outcome, decision) => {
                let o = &outcome.overall;
                let rate = |r: &crate::eval::metrics::Rate| {
                    format!("{:.0}% [{:.0}–{:.0}]", r.rate * 100.0, r.low * 100.0, r.high * 100.0)
                };
                eprintln!(
                    "      {} on heldout: valid calls {} (episodes with only valid calls {}), right first tool {}, task success {}, parsed {} ({:.2} cases/s)",
                    outcome.eval_run_id,
                    rate(&o.valid_calls),
                    rate(&o.arguments_valid),
                    rate(&o.first_tool),
                    rate(&o.success),
                    rate(&o.parsed),
                    outcome.cases_per_second
                );
                let verdict = if decision.promoted { "champion" } else { "not promoted" };
                eprintln!("      {verdict}: {}", decision.reason);
            }
        }
    }
}

/// The embedded default run: every pipeline stage (`pipeline::Recipe::quickstart`), then serve.
pub fn quickstart(config: &Config, args: ServeArgs) -> anyhow::Result<ExitCode> {
    let store = Store::open(config.data_dir())?;
    let previous =
        store.connect()?.list_exports()?.into_iter().find(|e| e.name == QUICKSTART_EXPORT && e.parity_passed);
    if let Some(export) = previous {
        eprintln!(
            "a previous quickstart's export {} is in {}: serving it (remove the data dir to start over)",
            export.id,
            config.data_dir().display()
        );
        eprintln!("[6/6] serve");
        return serve(config, args);
    }
    pipeline::run(&store, config, &Recipe::quickstart(), &mut QuickstartLines)?;
    eprintln!("[6/6] serve: the model answers as `{QUICKSTART_EXPORT}` (or `understudy`) on the OpenAI-compatible /v1 endpoint");
    serve(config, args)
}
