//! `understudy eval --model M|--endpoint URL [--suite NAME]... [--max-turns N] [--limit N]
//! [--json]` (a foreground eval job with a progress bar) and `understudy eval suites
//! list|import FILE [--name N]`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};

use super::progress::TerminalProgress;
use super::{flag_error, print_json};
use crate::config::Config;
use crate::eval::metrics::{Rate, Summary};
use crate::eval::promotion::{self, Rule};
use crate::eval::suite;
use crate::jobs::eval::EvalTarget;
use crate::jobs::requests::{EvalRequest, ModelScope};
use crate::jobs::{run_foreground, JobOutput, JobParams, JobRecord};
use crate::store::Store;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct EvalArgs {
    #[command(subcommand)]
    pub command: Option<EvalCommand>,
    /// A model id (mdl_...), `latest`, a model directory or a GGUF file.
    #[arg(long, conflicts_with = "endpoint")]
    pub model: Option<String>,
    /// An OpenAI-compatible server (http://host:port or its /v1).
    #[arg(long, requires = "endpoint_model")]
    pub endpoint: Option<String>,
    /// The model name to ask the endpoint for.
    #[arg(long)]
    pub endpoint_model: Option<String>,
    /// The environment variable holding the endpoint's API key.
    #[arg(long)]
    pub api_key_env: Option<String>,
    /// Suites to run (repeatable): `heldout` or an imported suite.
    #[arg(long = "suite", default_values_t = vec![suite::HELDOUT.to_string()])]
    pub suites: Vec<String>,
    /// The most replies per episode.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u16).range(1..=50))]
    pub max_turns: u16,
    /// The most tokens per reply.
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// Only the first N cases of each suite.
    #[arg(long)]
    pub limit: Option<usize>,
    /// After evaluating a stored model, apply the promotion rule (success must beat the
    /// champion's on the same suites by 0.02, argument validity not lower).
    #[arg(long)]
    pub promote: bool,
    /// Decode the model's tool calls in the offered tools' grammar, as the /v1 endpoint serves
    /// them (`tool_choice: auto`); without it the model's raw output is scored.
    #[arg(long)]
    pub tool_grammar: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum EvalCommand {
    /// Evaluation suites and their case counts.
    #[command(subcommand)]
    Suites(SuitesCommand),
}

#[derive(Debug, Subcommand)]
pub enum SuitesCommand {
    /// The built-in and imported suites.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Import a JSONL suite (every line checked; nothing is stored when one is refused).
    Import {
        file: PathBuf,
        /// The suite's name (default: the file name without extension).
        #[arg(long)]
        name: Option<String>,
    },
}

pub fn run(config: &Config, args: EvalArgs) -> anyhow::Result<ExitCode> {
    let store = Store::open(config.data_dir())?;
    if let Some(EvalCommand::Suites(command)) = args.command {
        return suites(&store, command);
    }
    let request = EvalRequest {
        model: args.model.clone(),
        endpoint: args.endpoint.clone(),
        endpoint_model: args.endpoint_model.clone(),
        suites: args.suites.clone(),
        max_turns: args.max_turns.into(),
        max_tokens: args.max_tokens,
        limit: args.limit,
        tool_grammar: args.tool_grammar,
    };
    let mut params = request.resolve(&store.connect()?, &ModelScope::Anywhere).map_err(flag_error)?;
    if let (EvalTarget::Endpoint { api_key, api_key_env, .. }, Some(variable)) = (&mut params.target, &args.api_key_env)
    {
        *api_key = Some(std::env::var(variable).with_context(|| format!("--api-key-env {variable}: not set"))?);
        *api_key_env = Some(variable.clone());
    }
    let model_id = match &params.target {
        EvalTarget::Model { model_id, .. } => model_id.clone(),
        EvalTarget::Endpoint { .. } => None,
    };
    anyhow::ensure!(!args.promote || model_id.is_some(), "--promote: only a stored model can become the champion");
    let bar = TerminalProgress::count("eval");
    let finished = run_foreground(&store, &JobParams::Eval(params), Some(&bar))?;
    bar.finish();
    let code = report_eval(&finished, args.json)?;
    if let (true, Some(model_id)) = (args.promote, model_id) {
        let rule = Rule { suites: args.suites.clone(), ..Rule::default() };
        let decision = promotion::apply(&mut store.connect()?, &model_id, &rule)?;
        let verdict = if decision.promoted { "promoted to champion" } else { "not promoted" };
        eprintln!("{verdict}: {}", decision.reason);
    }
    Ok(code)
}

fn suites(store: &Store, command: SuitesCommand) -> anyhow::Result<ExitCode> {
    let db = store.connect()?;
    match command {
        SuitesCommand::List { json } => {
            let mut rows =
                vec![serde_json::json!({"name": suite::HELDOUT, "cases": suite::HELDOUT_CASES, "built_in": true})];
            for suite in db.list_eval_suites()? {
                rows.push(serde_json::json!({"name": suite.name, "cases": suite.cases, "built_in": false}));
            }
            if json {
                print_json(&rows)?;
            } else {
                for row in rows {
                    let origin = if row["built_in"] == true { "built in" } else { "imported" };
                    println!("{:<24} {:>5} cases  {origin}", row["name"].as_str().unwrap_or(""), row["cases"]);
                }
            }
        }
        SuitesCommand::Import { file, name } => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let name =
                name.unwrap_or_else(|| file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default());
            anyhow::ensure!(
                !name.trim().is_empty() && name != suite::HELDOUT,
                "--name: choose a name other than {:?}",
                suite::HELDOUT
            );
            let cases = suite::parse(&text).map_err(|errors| {
                let lines: Vec<String> = errors.iter().take(20).map(|e| format!("{}:{e}", file.display())).collect();
                anyhow::anyhow!("{} line(s) refused, nothing imported:\n{}", errors.len(), lines.join("\n"))
            })?;
            anyhow::ensure!(!cases.is_empty(), "{}: no cases", file.display());
            let jsonl: Vec<String> = cases.iter().map(|c| serde_json::to_string(c).expect("cases serialise")).collect();
            db.upsert_eval_suite(&name, &jsonl.join("\n"), cases.len())?;
            println!("imported suite {name}: {} cases", cases.len());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn percent(rate: &Rate) -> String {
    if rate.n == 0 {
        return "-".into();
    }
    format!("{:5.1}% [{:.0}–{:.0}] of {}", rate.rate * 100.0, rate.low * 100.0, rate.high * 100.0, rate.n)
}

fn print_summary(label: &str, summary: &Summary) {
    let mut opened: Vec<(&String, &usize)> = summary.first_calls.iter().collect();
    opened.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let opened: Vec<String> = opened.iter().map(|(tool, n)| format!("{tool} {n}")).collect();
    println!(
        "{label:<16} {:>4}  parsed {}  valid calls {}  first tool {} (opened with {})  success {}  similarity {:.2}",
        summary.cases,
        percent(&summary.parsed),
        percent(&summary.valid_calls),
        percent(&summary.first_tool),
        opened.join(", "),
        percent(&summary.success),
        summary.similarity
    );
}

/// Print an evaluation; shared with `jobs resume`.
pub fn report_eval(job: &JobRecord, json: bool) -> anyhow::Result<ExitCode> {
    let JobOutput::Eval(outcome) = job.output()? else { anyhow::bail!("job {} is not an eval", job.id) };
    if json {
        print_json(outcome)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!("eval {}  {}  on {}", outcome.eval_run_id, outcome.target, outcome.suites.join(", "));
    print_summary("overall", &outcome.overall);
    for (category, summary) in &outcome.categories {
        print_summary(category, summary);
    }
    let o = &outcome.overall;
    println!(
        "episodes with only valid calls {}  names valid {}  sequence exact {}  stop {}  {:.1} turns, {:.0} tokens, {:.2}s per episode; {:.2} cases/s",
        percent(&o.arguments_valid),
        percent(&o.names_valid),
        percent(&o.sequence_exact),
        percent(&o.stopped),
        o.turns,
        o.tokens,
        o.seconds,
        outcome.cases_per_second
    );
    Ok(ExitCode::SUCCESS)
}
