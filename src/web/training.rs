//! The Training page: start an SFT, GRPO, PPO or DPO run with validated hyperparameters; runs list. A run's live
//! charts are on its job page; the models it registers are on the Models page (`models`).

use std::collections::{BTreeMap, HashMap};

use actix_web::{web, HttpResponse};
use askama::Template;

use super::error::{ApiError, ErrorBody, PageError};
use super::jobs::{recent_jobs_of, JobRow};
use super::shared::*;
use super::{AppState, WebError};
use crate::jobs::requests::{ModelScope, TrainRequest};
use crate::jobs::train::Phase;
use crate::jobs::JobRecord;
use crate::jobs::{submit, JobId, JobParams};

pub fn routes(config: &mut web::ServiceConfig) {
    config.route("/training", web::get().to(page)).route("/training/start", web::post().to(start));
}

/// Routes under `/api`.
pub fn api_routes(config: &mut web::ServiceConfig) {
    config.route("/runs", web::post().to(start_run));
}

/// (field, label, default) of the hyperparameters on the form; defaults are `TrainRequest`'s.
fn fields() -> [(&'static str, &'static str, String); 20] {
    let defaults = TrainRequest::default();
    [
        ("epochs", "Epochs (SFT, DPO)", defaults.epochs.to_string()),
        ("max_steps", "Maximum steps (empty: SFT and DPO run their epochs, GRPO 20 steps)", String::new()),
        ("max_minutes", "SFT: stop after N minutes too (empty: no limit)", String::new()),
        ("lr", "Learning rate (empty: 3e-3 for SFT, 1e-4 for GRPO, 5e-5 for PPO and DPO)", String::new()),
        ("batch_size", "Batch size", defaults.batch_size.to_string()),
        ("grad_accum", "Gradient accumulation", defaults.grad_accum.to_string()),
        ("warmup_steps", "Warmup steps", defaults.warmup_steps.to_string()),
        ("eval_every", "Eval every N steps", defaults.eval_every.to_string()),
        ("checkpoint_every", "Checkpoint every N steps", defaults.checkpoint_every.to_string()),
        ("max_seq_len", "Longest training sequence (tokens)", defaults.max_seq_len.to_string()),
        (
            "tool_name_weight",
            "SFT: loss weight of a tool call's name (1: like every token)",
            defaults.tool_name_weight.to_string(),
        ),
        ("seed", "Seed", defaults.seed.to_string()),
        ("suites", "GRPO, PPO: suites rolled out (comma-separated)", defaults.rl.suites.join(",")),
        ("group_size", "GRPO: episodes per case", defaults.rl.group_size.to_string()),
        ("prompts_per_step", "GRPO: cases per step", defaults.rl.prompts_per_step.to_string()),
        ("max_turns", "GRPO, PPO: replies per episode", defaults.rl.max_turns.to_string()),
        ("beta", "β (GRPO: KL weight, default 0; DPO: loss β, default 0.1)", String::new()),
        ("episodes", "PPO: episodes over the run", defaults.rl.episodes.to_string()),
        ("kl_coef", "PPO: KL penalty coefficient", defaults.rl.kl_coef.to_string()),
        ("ppo_epochs", "PPO: passes over each batch of rollouts", defaults.rl.ppo_epochs.to_string()),
    ]
}

fn form(values: &HashMap<String, String>, errors: &BTreeMap<&'static str, String>) -> TrainingForm {
    TrainingForm {
        model: values.get("model").cloned().unwrap_or_else(|| TrainRequest::default().model),
        lora_rank: values.get("lora_rank").cloned().unwrap_or_default(),
        fields: fields()
            .into_iter()
            .map(|(name, label, default)| FormField {
                name,
                label,
                value: values.get(name).cloned().unwrap_or(default),
                error: errors.get(name).cloned(),
            })
            .collect(),
        errors: errors.clone(),
    }
}

async fn render(
    state: &AppState,
    values: &HashMap<String, String>,
    errors: BTreeMap<&'static str, String>,
) -> Result<TrainingPage, WebError> {
    let datasets = state.with_db(|db| Ok(db.list_datasets()?)).await?;
    let selected =
        values.get("dataset").cloned().or_else(|| datasets.first().map(|d| d.id.clone())).unwrap_or_default();
    let options = datasets
        .iter()
        .map(|d| SelectOption {
            value: d.id.clone(),
            label: format!("{} ({}, {} train)", d.id, d.name, d.stats["examples"]["train"]),
            selected: d.id == selected,
        })
        .collect();
    Ok(TrainingPage {
        nav: Nav::new("/training"),
        form: form(values, &errors),
        datasets: options,
        jobs: recent_jobs_of(state, 20, Some("train".into())).await?,
    })
}

async fn page(state: web::Data<AppState>) -> Result<HttpResponse, PageError> {
    html(render(&state, &HashMap::new(), Default::default()).await?)
}

/// The form's text as a request, and the fields that are not numbers (they keep their defaults
/// in the request, so its own rules still report every other bad field in the same answer).
fn parse(values: &HashMap<String, String>) -> (TrainRequest, BTreeMap<&'static str, String>) {
    let mut errors = BTreeMap::new();
    let text = |name: &str| values.get(name).map(|v| v.trim().to_string()).unwrap_or_default();
    let mut request = TrainRequest::default();
    fn number<T: std::str::FromStr>(
        errors: &mut BTreeMap<&'static str, String>,
        name: &'static str,
        text: String,
        target: &mut T,
    ) {
        match text.parse::<T>() {
            Ok(value) => *target = value,
            Err(_) => {
                errors.insert(name, "enter a number".into());
            }
        }
    }
    let phase = match text("phase").as_str() {
        "" | "sft" => Phase::Sft,
        "grpo" => Phase::Grpo,
        "ppo" => Phase::Ppo,
        "dpo" => Phase::Dpo,
        _ => {
            errors.insert("phase", "choose sft, grpo, ppo or dpo".into());
            Phase::Sft
        }
    };
    request.phase = phase;
    if phase != Phase::Sft {
        request.model = "latest".into();
    }
    if !text("epochs").is_empty() {
        number(&mut errors, "epochs", text("epochs"), &mut request.epochs);
    } else if phase == Phase::Dpo {
        request.epochs = 3;
    }
    if !text("lr").is_empty() {
        let target = match phase {
            Phase::Grpo => &mut request.rl.lr,
            Phase::Ppo => &mut request.rl.ppo_lr,
            Phase::Dpo => &mut request.rl.dpo_lr,
            _ => &mut request.lr,
        };
        number(&mut errors, "lr", text("lr"), target);
    }
    if !text("beta").is_empty() {
        let target = if phase == Phase::Dpo { &mut request.rl.dpo_beta } else { &mut request.rl.beta };
        number(&mut errors, "beta", text("beta"), target);
    }
    for (name, target) in [
        ("group_size", &mut request.rl.group_size),
        ("prompts_per_step", &mut request.rl.prompts_per_step),
        ("max_turns", &mut request.rl.max_turns),
        ("ppo_epochs", &mut request.rl.ppo_epochs),
    ] {
        if !text(name).is_empty() {
            number(&mut errors, name, text(name), target);
        }
    }
    if !text("episodes").is_empty() {
        number(&mut errors, "episodes", text("episodes"), &mut request.rl.episodes);
    }
    if !text("kl_coef").is_empty() {
        number(&mut errors, "kl_coef", text("kl_coef"), &mut request.rl.kl_coef);
    }
    if !text("suites").is_empty() {
        request.rl.suites = text("suites").split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
    }
    number(&mut errors, "batch_size", text("batch_size"), &mut request.batch_size);
    number(&mut errors, "grad_accum", text("grad_accum"), &mut request.grad_accum);
    number(&mut errors, "warmup_steps", text("warmup_steps"), &mut request.warmup_steps);
    number(&mut errors, "eval_every", text("eval_every"), &mut request.eval_every);
    number(&mut errors, "checkpoint_every", text("checkpoint_every"), &mut request.checkpoint_every);
    number(&mut errors, "seed", text("seed"), &mut request.seed);
    if !text("max_seq_len").is_empty() {
        number(&mut errors, "max_seq_len", text("max_seq_len"), &mut request.max_seq_len);
    }
    if !text("tool_name_weight").is_empty() {
        number(&mut errors, "tool_name_weight", text("tool_name_weight"), &mut request.tool_name_weight);
    }
    if !text("max_steps").is_empty() {
        let mut steps = 0u64;
        number(&mut errors, "max_steps", text("max_steps"), &mut steps);
        match phase {
            Phase::Grpo => request.rl.steps = steps,
            _ => request.max_steps = Some(steps),
        }
    }
    if !text("max_minutes").is_empty() {
        let mut minutes = 0f64;
        number(&mut errors, "max_minutes", text("max_minutes"), &mut minutes);
        request.max_minutes = Some(minutes);
    }
    if !text("lora_rank").is_empty() {
        let mut rank = 0usize;
        number(&mut errors, "lora_rank", text("lora_rank"), &mut rank);
        request.lora_rank = Some(rank);
    }
    if !text("model").is_empty() {
        request.model = text("model");
    }
    request.dataset = Some(text("dataset")).filter(|d| !d.is_empty());
    (request, errors)
}

/// Resolve a training request (dataset, base model, every rule of `TrainRequest`) off the async
/// workers and queue the run; shared with the API.
pub async fn enqueue(state: &AppState, request: TrainRequest) -> Result<JobId, WebError> {
    let config = state.config.clone();
    let id = state
        .blocking(move |db| {
            let params = request.resolve(db, &config, &ModelScope::web(&config))?;
            Ok(submit(db, &JobParams::Train(params))?)
        })
        .await?;
    state.runner.notify();
    Ok(id)
}

async fn start(
    state: web::Data<AppState>,
    values: web::Form<HashMap<String, String>>,
) -> Result<HttpResponse, PageError> {
    let values = values.into_inner();
    let (request, mut errors) = parse(&values);
    let outcome = if errors.is_empty() {
        enqueue(&state, request).await
    } else {
        // Not a number somewhere: check the rest too, but queue nothing.
        let config = state.config.clone();
        match state.blocking(move |db| request.resolve(db, &config, &ModelScope::web(&config))).await {
            Ok(_) => Err(WebError::Fields(Vec::new())),
            Err(error) => Err(error),
        }
    };
    match outcome {
        Ok(id) => return Ok(see_other(&format!("/jobs/{id}"))),
        Err(WebError::Fields(fields)) => {
            for field in fields {
                errors.entry(field.field).or_insert(field.message);
            }
        }
        Err(other) => return Err(other.into()),
    }
    let body = render(&state, &values, errors).await?.render().map_err(|e| WebError::Internal(e.to_string()))?;
    Ok(HttpResponse::UnprocessableEntity().content_type("text/html; charset=utf-8").body(body))
}

pub struct FormField {
    pub name: &'static str,
    pub label: &'static str,
    pub value: String,
    pub error: Option<String>,
}

#[derive(Default)]
pub struct TrainingForm {
    /// `tiny`, or a model directory / .gguf under `<data dir>/models`.
    pub model: String,
    pub lora_rank: String,
    pub fields: Vec<FormField>,
    pub errors: std::collections::BTreeMap<&'static str, String>,
}

#[derive(Template)]
#[template(path = "pages/training.html")]
pub struct TrainingPage {
    pub nav: Nav,
    pub form: TrainingForm,
    pub datasets: Vec<SelectOption>,
    pub jobs: Vec<JobRow>,
}

/// Start a training run (a `train` job); its metrics appear under /api/jobs/{id}. Takes every
/// option `understudy train` takes (the same defaults and rules).
#[utoipa::path(post, path = "/api/runs", request_body = TrainRequest,
    responses((status = 202, body = JobRecord), (status = 400, body = ErrorBody)))]
pub async fn start_run(state: web::Data<AppState>, request: web::Json<TrainRequest>) -> Result<HttpResponse, ApiError> {
    let id = enqueue(&state, request.into_inner()).await?;
    accepted(&state, id).await
}
