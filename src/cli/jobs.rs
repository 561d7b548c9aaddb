//! `understudy jobs list|show|cancel|resume`.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};

use super::print_json;
use super::progress::TerminalProgress;
use crate::config::Config;
use crate::jobs::{run_job, JobKind, JobRecord};
use crate::store::Store;

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// Recent jobs, newest first.
    List {
        #[arg(long, default_value_t = 20)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// One job with its log tail.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Ask a queued or running job to stop.
    Cancel { id: String },
    /// Continue an interrupted, cancelled or failed job from its checkpoint.
    Resume(ResumeArgs),
}

#[derive(Debug, Args)]
pub struct ResumeArgs {
    pub id: String,
    /// Queue it for a running server instead of running it here.
    #[arg(long)]
    pub background: bool,
    #[arg(long)]
    pub json: bool,
}

pub fn run(config: &Config, command: JobsCommand) -> anyhow::Result<ExitCode> {
    let store = Store::open(config.data_dir())?;
    let db = store.connect()?;
    // Jobs whose process died (kill -9, power loss) show as interrupted, not running.
    db.mark_orphaned_jobs_interrupted(crate::jobs::other_process_is_alive)?;
    match command {
        JobsCommand::List { limit, json } => {
            let jobs = db.list_jobs(limit)?;
            if json {
                print_json(&jobs)?;
            } else {
                for job in jobs {
                    println!("{}", summary(&job));
                }
            }
        }
        JobsCommand::Show { id, json } => {
            let job = db.get_job(&id)?.with_context(|| format!("no job with id {id:?}"))?;
            let logs = db.job_logs(&id, 50)?;
            if json {
                print_json(&serde_json::json!({"job": job, "logs": logs, "metrics": db.job_metrics(&id)?}))?;
            } else {
                println!("{}", summary(&job));
                if let Some(error) = &job.error {
                    println!("error: {error}");
                }
                for log in logs {
                    println!("{} {:<5} {}", log.logged_at, log.level, log.message);
                }
            }
        }
        JobsCommand::Cancel { id } => {
            let job = db.request_cancel(&id)?.with_context(|| format!("no job with id {id:?}"))?;
            if job.status.is_finished() && !job.cancel_requested && job.status != crate::jobs::JobStatus::Cancelled {
                anyhow::bail!("job {id} already ended as {}", job.status.as_str());
            }
            eprintln!("cancel requested for {id} (now {})", job.status.as_str());
        }
        JobsCommand::Resume(args) => {
            let job = db.get_job(&args.id)?.with_context(|| format!("no job with id {:?}", args.id))?;
            if !job.status.is_resumable() {
                anyhow::bail!(
                    "job {} is {}; only interrupted, cancelled or failed jobs resume",
                    job.id,
                    job.status.as_str()
                );
            }
            if args.background {
                let job = db.requeue_job(&job.id)?.context("job vanished")?;
                eprintln!("queued {} again", job.id);
                return Ok(ExitCode::SUCCESS);
            }
            if !db.take_over_job(&job.id, std::process::id())? {
                anyhow::bail!("job {} was taken by another process", job.id);
            }
            let job = db.get_job(&job.id)?.context("job vanished")?;
            let kind = job.kind;
            let bar = match kind {
                JobKind::Bootstrap | JobKind::BuildDataset | JobKind::Train | JobKind::Export | JobKind::Eval => {
                    TerminalProgress::count(kind.as_str())
                }
                JobKind::ImportTraces | JobKind::ImportDpo | JobKind::Deploy => TerminalProgress::bytes(kind.as_str()),
            };
            let finished = run_job(&store, job, Some(&bar))?;
            bar.finish();
            return match kind {
                JobKind::ImportTraces | JobKind::ImportDpo => super::import::report_import(&finished, args.json),
                JobKind::Bootstrap => super::bootstrap::report_bootstrap(&store, &finished, 0, args.json),
                JobKind::BuildDataset => super::dataset::report_build(&finished, args.json),
                JobKind::Train => super::train::report_train(&finished, args.json),
                JobKind::Export => super::export::report_export(&store, &finished, args.json),
                JobKind::Deploy => super::deploy::report_deploy(&finished, args.json),
                JobKind::Eval => super::eval::report_eval(&finished, args.json),
            };
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn summary(job: &JobRecord) -> String {
    let progress = job.percent().map(|p| format!("{p:>3}%")).unwrap_or_else(|| "   -".into());
    format!(
        "{}  {:<14} {:<11} {}  {}  {}",
        job.id,
        job.kind,
        job.status.as_str(),
        progress,
        job.created_at,
        job.message
    )
}
