//! The `eval` job: play every case of the chosen suites with the target model, store each
//! case's score and episode with the job checkpoint (the next case), and finish with the summary
//! overall and per category. A resumed run continues after the last stored case; greedy
//! decoding makes it end with the numbers an uninterrupted run would.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{JobContext, JobError};
use crate::eval::episode::Policy;
use crate::eval::metrics::{summarize, CaseScore, Summary};
use crate::eval::policy::{EndpointPolicy, LocalPolicy};
use crate::eval::suite::{self, EvalCase};
use crate::store::Db;
use crate::traces::formats::{parse_record, ImportFormat};

/// What is evaluated.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EvalTarget {
    /// A stored model (or any model directory / GGUF) decoded by our runtime.
    Model { model_id: Option<String>, path: PathBuf, label: String },
    /// An OpenAI-compatible endpoint. The key is never stored: it is read from `api_key_env`
    /// by the command line when the run starts (a resumed run has to be started again with it).
    Endpoint {
        url: String,
        model: String,
        api_key_env: Option<String>,
        #[serde(skip)]
        api_key: Option<String>,
    },
}

impl EvalTarget {
    pub fn label(&self) -> String {
        match self {
            EvalTarget::Model { label, .. } => label.clone(),
            EvalTarget::Endpoint { url, model, .. } => format!("{model} at {url}"),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalParams {
    pub target: EvalTarget,
    /// Suite names: `heldout` or an imported suite.
    pub suites: Vec<String>,
    /// The most replies per episode.
    pub max_turns: usize,
    /// The most tokens per reply.
    pub max_tokens: usize,
    /// Only the first N cases of each suite.
    pub limit: Option<usize>,
    /// A stored model's tool calls are decoded in the offered tools' grammar, as `/v1` serves
    /// them (`auto`); off, the model's raw output is scored.
    #[serde(default)]
    pub tool_grammar: bool,
}

/// What a finished evaluation reports (`eval --json`).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EvalOutcome {
    pub eval_run_id: String,
    pub target: String,
    pub suites: Vec<String>,
    pub overall: Summary,
    pub categories: std::collections::BTreeMap<String, Summary>,
    pub cases_per_second: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Checkpoint {
    next: usize,
    seconds: f64,
}

/// The run id of an eval job: derived from the job id, so a resumed job keeps its run.
pub fn eval_run_id(job_id: &str) -> String {
    format!("ev_{}", job_id.trim_start_matches("job_"))
}

/// The cases of the named suites, in order, each with its suite name.
pub fn load_cases(db: &Db, suites: &[String], limit: Option<usize>) -> Result<Vec<(String, EvalCase)>, String> {
    let mut cases = Vec::new();
    for name in suites {
        let mut suite_cases = if let Some(cases) = suite::builtin_suite(name) {
            cases.to_vec()
        } else if let Some(id) = name.strip_prefix(suite::DATASET_PREFIX) {
            let dataset =
                db.get_dataset(id).map_err(|e| e.to_string())?.ok_or_else(|| format!("no dataset with id {id:?}"))?;
            let path = std::path::Path::new(&dataset.path).join("test.jsonl");
            let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let mut traces = Vec::new();
            for (number, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                let trace = parse_record(ImportFormat::Canonical, line)
                    .map_err(|e| format!("{}:{}: {e}", path.display(), number + 1))?;
                traces.push(trace);
            }
            let templates: Vec<_> = crate::bootstrap::active_templates(db)
                .map_err(|e| e.to_string())?
                .into_iter()
                .map(|(t, _)| t)
                .collect();
            suite::from_traces(&traces, &templates)
        } else {
            let text = db.eval_suite(name).map_err(|e| e.to_string())?.ok_or_else(|| {
                format!("no suite named {name:?} (built in: heldout, training; import one with `eval suites import`)")
            })?;
            suite::parse(&text).map_err(|errors| format!("suite {name}: {}", errors[0]))?
        };
        if let Some(limit) = limit {
            suite_cases.truncate(limit);
        }
        cases.extend(suite_cases.into_iter().map(|case| (name.clone(), case)));
    }
    Ok(cases)
}

pub fn run(context: &mut JobContext<'_>, params: &EvalParams) -> Result<EvalOutcome, JobError> {
    let job_id = context.job().id.to_string();
    let run_id = eval_run_id(&job_id);
    let cases = load_cases(context.db(), &params.suites, params.limit).map_err(JobError::Failed)?;
    if cases.is_empty() {
        return Err(JobError::Failed("the suites hold no cases".into()));
    }
    let mut policy: Box<dyn Policy> = match &params.target {
        EvalTarget::Model { path, .. } => {
            Box::new(LocalPolicy::load(path, params.max_tokens, params.tool_grammar).map_err(JobError::Failed)?)
        }
        EvalTarget::Endpoint { url, model, api_key, .. } => {
            Box::new(EndpointPolicy::new(url, model, api_key.clone(), params.max_tokens, Duration::from_secs(120)))
        }
    };
    let model_id = match &params.target {
        EvalTarget::Model { model_id, .. } => model_id.clone(),
        EvalTarget::Endpoint { .. } => None,
    };
    context.db().ensure_eval_run(&run_id, &job_id, &params.target.label(), model_id.as_deref(), &params.suites)?;
    let mut checkpoint: Checkpoint =
        context.job().checkpoint.clone().and_then(|v| serde_json::from_value(v).ok()).unwrap_or_default();
    context.log(
        "info",
        &format!(
            "evaluating {} on {} ({} cases from case {})",
            params.target.label(),
            params.suites.join(", "),
            cases.len(),
            checkpoint.next + 1
        ),
    )?;
    let started = Instant::now();
    let earlier = checkpoint.seconds;
    let total = cases.len() as u64;
    while checkpoint.next < cases.len() {
        let (suite_name, case) = &cases[checkpoint.next];
        let (episode, score) = crate::eval::evaluate_case(policy.as_mut(), case, params.max_turns);
        if let Some(error) = &score.error {
            context.log("warn", &format!("{}: {error}", case.id))?;
        }
        let next = Checkpoint { next: checkpoint.next + 1, seconds: earlier + started.elapsed().as_secs_f64() };
        let state = serde_json::to_string(&next).expect("checkpoint serialises");
        let score_json = serde_json::to_value(&score).expect("scores serialise");
        let episode_json = serde_json::to_value(&episode).expect("episodes serialise");
        let case_json = serde_json::to_value(case).expect("cases serialise");
        context.db().insert_eval_case(
            &run_id,
            checkpoint.next,
            &case.id,
            suite_name,
            &case.category,
            &score_json,
            &episode_json,
            &case_json,
            (&job_id, &state),
        )?;
        checkpoint = next;
        let message = format!("case {}/{} {}", checkpoint.next, total, case.id);
        context.progress(checkpoint.next as u64, Some(total), &message, false)?;
        context.check_cancelled()?;
    }
    let stored = context.db().eval_cases(&run_id)?;
    let scores: Vec<(String, CaseScore)> = stored
        .iter()
        .map(|row| Ok((row.category.clone(), serde_json::from_value(row.score.clone())?)))
        .collect::<Result<_, serde_json::Error>>()
        .map_err(|e| JobError::Failed(format!("a stored case score is unreadable: {e}")))?;
    let (overall, categories) = summarize(&scores);
    let outcome = EvalOutcome {
        eval_run_id: run_id.clone(),
        target: params.target.label(),
        suites: params.suites.clone(),
        cases_per_second: scores.len() as f64 / checkpoint.seconds.max(1e-9),
        overall,
        categories,
    };
    context.db().finish_eval_run(&run_id, &serde_json::to_value(&outcome).expect("outcome serialises"))?;
    context.progress(total, Some(total), "done", true)?;
    for (name, rate) in [
        ("parsed", outcome.overall.parsed.rate),
        ("arguments_valid", outcome.overall.arguments_valid.rate),
        ("first_tool", outcome.overall.first_tool.rate),
        ("success", outcome.overall.success.rate),
    ] {
        context.metric(total as i64, name, rate)?;
    }
    Ok(outcome)
}
