//! `understudy orchestrator once|start|stop|status|config`: retrain as traces accumulate (spec
//! 3.12). `once` runs one cycle here with progress bars, or says why not; `start` runs the hidden
//! `orchestrator run` loop detached; `config` shows and edits the stored configuration.

use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::{Args, Subcommand};

use super::progress::TerminalProgress;
use super::{flag_error, print_json};
use crate::config::Config;
use crate::daemon::StopOutcome;
use crate::jobs::ProgressSink;
use crate::orchestrator::{
    self, config as orchestrator_config, Attempt, Cycle, CycleObserver, CycleRunner, CycleStage, CycleStatus,
    OrchestratorConfig, OrchestratorError, OrchestratorStatus, StartOutcome,
};
use crate::store::Store;

#[derive(Debug, Subcommand)]
pub enum OrchestratorCommand {
    /// Run one cycle now (or resume the unfinished one), or say how many traces are missing.
    Once(OnceArgs),
    /// Run the orchestrator in the background: a cycle whenever enough new traces arrived.
    Start,
    /// Stop the background orchestrator (its running job stops at its next checkpoint).
    Stop,
    /// Cycles done, traces, the next cycle's threshold, the champion, the history.
    Status(JsonArgs),
    /// Show the stored configuration, or change the fields given.
    Config(ConfigArgs),
    /// The orchestrator loop itself (what `start` runs in the background).
    #[command(hide = true)]
    Run,
}

#[derive(Debug, Args)]
pub struct JsonArgs {
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct OnceArgs {
    #[arg(long)]
    pub json: bool,
    /// Ollama's address for auto-deploy when the configuration names none.
    #[arg(long, env = "OLLAMA_HOST", hide_env_values = true)]
    pub ollama_host: Option<String>,
}

#[derive(Debug, Args)]
pub struct ConfigArgs {
    #[arg(long)]
    pub json: bool,
    /// Back to the defaults before applying the other flags.
    #[arg(long)]
    pub reset: bool,
    #[arg(long, allow_negative_numbers = true)]
    pub min_traces: Option<i64>,
    #[arg(long, allow_negative_numbers = true)]
    pub traces_per_cycle: Option<i64>,
    /// Every k-th cycle runs the RL phase.
    #[arg(long)]
    pub rl_every: Option<u32>,
    /// grpo, ppo, dpo or none.
    #[arg(long)]
    pub rl_phase: Option<String>,
    #[arg(long)]
    pub base_model: Option<String>,
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// SFT training-time budget per cycle in minutes (0: none).
    #[arg(long)]
    pub max_minutes: Option<f64>,
    #[arg(long)]
    pub batch_size: Option<usize>,
    #[arg(long)]
    pub max_seq_len: Option<usize>,
    #[arg(long)]
    pub rl_steps: Option<u64>,
    #[arg(long)]
    pub rl_max_tokens: Option<usize>,
    #[arg(long)]
    pub eval_suite: Option<String>,
    /// Only the suite's first N cases (0: all of them).
    #[arg(long)]
    pub eval_limit: Option<usize>,
    #[arg(long)]
    pub eval_max_tokens: Option<usize>,
    #[arg(long)]
    pub promotion_metric: Option<String>,
    #[arg(long)]
    pub promotion_margin: Option<f64>,
    /// Repeatable.
    #[arg(long = "export-quant")]
    pub export_quants: Vec<String>,
    #[arg(long)]
    pub auto_deploy: Option<bool>,
    /// Ollama's address for auto-deploy ("" clears it).
    #[arg(long)]
    pub ollama_host: Option<String>,
    #[arg(long)]
    pub model_name: Option<String>,
    #[arg(long = "interval")]
    pub interval_seconds: Option<u64>,
    #[arg(long)]
    pub run_in_serve: Option<bool>,
    #[arg(long)]
    pub seed: Option<u64>,
}

pub fn run(config: &Config, command: OrchestratorCommand) -> anyhow::Result<ExitCode> {
    match command {
        OrchestratorCommand::Once(args) => once(config, args),
        OrchestratorCommand::Start => start(config),
        OrchestratorCommand::Stop => stop(config),
        OrchestratorCommand::Status(args) => status(config, args),
        OrchestratorCommand::Config(args) => configure(config, args),
        OrchestratorCommand::Run => run_loop(config),
    }
}

/// One line per stage, one progress bar per stage job.
struct CycleLines;

impl CycleObserver for CycleLines {
    fn begin(&mut self, stage: CycleStage) -> Option<Box<dyn ProgressSink>> {
        eprintln!("  {stage}");
        Some(Box::new(TerminalProgress::count(stage.as_str())))
    }

    fn finished(&mut self, cycle: &Cycle) {
        if cycle.status == CycleStatus::Failed {
            eprintln!("  cycle {} failed: {}", cycle.number, cycle.error.as_deref().unwrap_or("-"));
        }
    }
}

fn once(config: &Config, args: OnceArgs) -> anyhow::Result<ExitCode> {
    let store = Store::open(config.data_dir())?;
    let _lock = orchestrator::lock(config.data_dir(), "once")?;
    let runner = CycleRunner {
        store: &store,
        config,
        default_ollama_host: crate::deploy::host_or_default(args.ollama_host),
        stop: Some(stop_on_signal()),
    };
    let attempt = orchestrator::once(&runner, &mut CycleLines)?;
    if args.json {
        print_json(&attempt)?;
    } else {
        match &attempt {
            Attempt::NotReady { readiness } => println!(
                "no cycle: {} new traces since the last cycle, {} needed; {} more to go",
                readiness.new_traces, readiness.threshold, readiness.missing
            ),
            Attempt::Ran { cycle } => print_cycle(cycle),
        }
    }
    Ok(match attempt {
        Attempt::Ran { cycle } if cycle.status == CycleStatus::Failed => ExitCode::FAILURE,
        _ => ExitCode::SUCCESS,
    })
}

fn print_cycle(cycle: &Cycle) {
    let state = &cycle.state;
    println!("cycle {} {} ({})", cycle.number, cycle.status.as_str(), cycle.id);
    let sources: Vec<String> = state.traces.new_by_source.iter().map(|(s, n)| format!("{s} {n}")).collect();
    println!("  traces      {} in the store, {} new ({})", state.traces.total, state.traces.new, sources.join(", "));
    println!("  started     from {}", state.start_model.as_deref().unwrap_or("the base model"));
    if let Some(dataset) = &state.dataset_id {
        println!("  dataset     {dataset}");
    }
    for run in [&state.sft, &state.rl].into_iter().flatten() {
        let reward = run.final_reward.map_or(String::new(), |r| format!(", reward {r:.3}"));
        println!(
            "  {:<11} model {} ({} steps, loss {:.3}{reward})",
            run.phase, run.model_id, run.steps, run.final_loss
        );
    }
    if let Some(reason) = &state.rl_skipped {
        println!("  rl          skipped: {reason}");
    }
    if let Some(eval) = &state.eval {
        println!(
            "  eval        {} on {} cases: success {:.0}%, first tool {:.0}%, valid calls {:.0}%, parsed {:.0}%",
            eval.eval_run_id,
            eval.cases,
            eval.success * 100.0,
            eval.first_tool * 100.0,
            eval.valid_calls * 100.0,
            eval.parsed * 100.0
        );
    }
    if let Some(decision) = &state.decision {
        let verdict = if decision.promoted { "promoted" } else { "kept the champion" };
        println!("  promotion   {verdict}: {}", decision.reason);
    }
    if let Some(export) = &state.export {
        let parity = if export.parity_passed { "parity passed" } else { "parity FAILED" };
        println!("  export      {} as {} ({parity})", export.export_id, export.name);
    }
    if let Some(deploy) = &state.deploy {
        println!("  deploy      {}: {}", if deploy.ok { "ok" } else { "failed" }, deploy.message);
    }
    if let Some(error) = &cycle.error {
        println!("  error       {error}");
    }
}

fn start(config: &Config) -> anyhow::Result<ExitCode> {
    match orchestrator::start(&std::env::current_exe()?, config.data_dir())? {
        StartOutcome::AlreadyRunning(holder) => {
            println!("already running (pid {}, {}, since {})", holder.pid, holder.mode, holder.started_at)
        }
        StartOutcome::Started { pid, log } => {
            println!("orchestrator started (pid {pid}); log {}", log.display());
            println!("  `understudy orchestrator status` shows its cycles; `orchestrator stop` ends it");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn stop(config: &Config) -> anyhow::Result<ExitCode> {
    match orchestrator::stop(config.data_dir())? {
        StopOutcome::NotRunning => println!("the orchestrator is not running"),
        StopOutcome::Stopped(pid) => println!("orchestrator stopped (pid {pid})"),
        StopOutcome::Killed(pid) => println!("orchestrator killed (pid {pid}); its cycle resumes at the next start"),
    }
    Ok(ExitCode::SUCCESS)
}

fn status(config: &Config, args: JsonArgs) -> anyhow::Result<ExitCode> {
    let store = Store::open(config.data_dir())?;
    let status = orchestrator::status(&store.connect()?, config.data_dir(), orchestrator::HISTORY)?;
    if args.json {
        print_json(&status)?;
    } else {
        print_status(&status);
    }
    Ok(ExitCode::SUCCESS)
}

fn percent(rate: Option<f64>) -> String {
    rate.map_or("-".into(), |r| format!("{:.0}%", r * 100.0))
}

fn print_status(status: &OrchestratorStatus) {
    match &status.running {
        Some(h) => println!("orchestrator  running (pid {}, {}, since {})", h.pid, h.mode, h.started_at),
        None => println!("orchestrator  not running (`understudy orchestrator start`, or `once` for one cycle)"),
    }
    println!("cycles        {} succeeded, {} failed", status.cycles_succeeded, status.cycles_failed);
    let r = &status.readiness;
    println!(
        "traces        {} in the store, {} new since the last cycle; next cycle at {} ({} to go)",
        r.traces, r.new_traces, r.threshold, r.missing
    );
    if let Some(cycle) = &status.current {
        let job = status.current_job.as_ref().map_or(String::new(), |j| {
            format!(" — job {} {} {}", j.id, j.percent.map_or(String::new(), |p| format!("{p}%")), j.message)
        });
        println!("current       cycle {} at {}{job}", cycle.number, cycle.stage);
    }
    match &status.champion {
        Some(c) => println!(
            "champion      {} ({}): success {}, first tool {}, valid calls {} on {}",
            c.model_id,
            c.name,
            percent(c.success),
            percent(c.first_tool),
            percent(c.valid_calls),
            status.config.eval_suite
        ),
        None => println!("champion      none yet"),
    }
    if !status.history.is_empty() {
        println!("history");
        for cycle in &status.history {
            let s = &cycle.state;
            let verdict = match (&s.decision, cycle.status) {
                (_, CycleStatus::Running) => format!("running at {}", cycle.stage),
                (_, CycleStatus::Failed) => format!("failed: {}", cycle.error.as_deref().unwrap_or("-")),
                (Some(d), _) if d.promoted => "promoted".into(),
                (Some(_), _) => "kept the champion".into(),
                (None, _) => "-".into(),
            };
            println!(
                "  {:>3}  {}  traces +{:<5} success {:>4}  first tool {:>4}  {}",
                cycle.number,
                cycle.started_at.get(..19).unwrap_or(&cycle.started_at),
                s.traces.new,
                percent(s.eval.as_ref().map(|e| e.success)),
                percent(s.eval.as_ref().map(|e| e.first_tool)),
                verdict
            );
        }
    }
}

fn configure(config: &Config, args: ConfigArgs) -> anyhow::Result<ExitCode> {
    let store = Store::open(config.data_dir())?;
    let db = store.connect()?;
    let mut c = if args.reset { OrchestratorConfig::default() } else { orchestrator_config::load(&db)? };
    let before = c.clone();
    macro_rules! set {
        ($($field:ident),*) => { $(if let Some(value) = args.$field { c.$field = value; })* };
    }
    set!(
        min_traces,
        traces_per_cycle,
        rl_every,
        rl_phase,
        base_model,
        max_steps,
        batch_size,
        max_seq_len,
        rl_steps,
        rl_max_tokens,
        eval_suite,
        eval_max_tokens,
        promotion_metric,
        promotion_margin,
        auto_deploy,
        model_name,
        interval_seconds,
        run_in_serve,
        seed
    );
    if let Some(minutes) = args.max_minutes {
        c.max_minutes = (minutes != 0.0).then_some(minutes);
    }
    if let Some(limit) = args.eval_limit {
        c.eval_limit = (limit > 0).then_some(limit);
    }
    if let Some(host) = args.ollama_host {
        c.ollama_host = Some(host).filter(|h| !h.trim().is_empty());
    }
    if !args.export_quants.is_empty() {
        c.export_quants = args.export_quants;
    }
    if c != before || args.reset {
        orchestrator_config::save(&db, &c).map_err(flag_error)?;
    }
    if args.json {
        print_json(&c)?;
    } else {
        println!("{}", serde_json::to_string_pretty(&c)?);
    }
    Ok(ExitCode::SUCCESS)
}

static STOP_REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn request_stop(_signal: libc::c_int) {
    STOP_REQUESTED.store(true, Ordering::SeqCst);
}

/// A stop flag that SIGTERM and SIGINT set: the running job stops at its next check
/// (`interrupted`, resumable) and the cycle stays at its stage.
fn stop_on_signal() -> Arc<AtomicBool> {
    // Safety: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGTERM, request_stop as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, request_stop as *const () as libc::sighandler_t);
    }
    let flag = Arc::new(AtomicBool::new(false));
    let bridge = flag.clone();
    std::thread::spawn(move || loop {
        if STOP_REQUESTED.load(Ordering::SeqCst) {
            bridge.store(true, Ordering::SeqCst);
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    });
    flag
}

fn run_loop(config: &Config) -> anyhow::Result<ExitCode> {
    let store = Store::open(config.data_dir())?;
    let lock = match orchestrator::lock(config.data_dir(), "process") {
        Ok(lock) => lock,
        Err(OrchestratorError::AlreadyRunning(holder)) => {
            anyhow::bail!("{}", OrchestratorError::AlreadyRunning(holder))
        }
        Err(other) => return Err(other.into()),
    };
    let stop = stop_on_signal();
    let runner = CycleRunner {
        store: &store,
        config,
        default_ollama_host: crate::deploy::host_or_default(std::env::var("OLLAMA_HOST").ok()),
        stop: Some(stop.clone()),
    };
    eprintln!("orchestrator running for {} (pid {})", absolute(config.data_dir()), std::process::id());
    orchestrator::run_loop(&runner, &mut orchestrator::cycle::Quiet, &stop);
    drop(lock);
    Ok(ExitCode::SUCCESS)
}

fn absolute(path: &Path) -> String {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()).display().to_string()
}
