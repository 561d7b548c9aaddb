//! The Training page: start an SFT run with validated hyperparameters; runs list. A run's live
//! charts are on its job page; the models it registers are on the Models page (`models`).

use std::collections::HashMap;

use actix_web::{web, HttpResponse};
use askama::Template;

use super::error::PageError;
use super::pages::{html, recent_jobs_of, see_other};
use super::views::*;
use super::{AppState, WebError};
use crate::jobs::train::{params_value, TrainParams};
use crate::jobs::{JobKind, JobRecord};
use crate::model::llama::LlamaConfig;
use crate::train::sft::SftConfig;

pub fn routes(config: &mut web::ServiceConfig) {
    config.route("/training", web::get().to(page)).route("/training/start", web::post().to(start));
}

/// (field, label, default) of the numeric hyperparameters on the form.
const FIELDS: [(&str, &str, &str); 9] = [
    ("epochs", "Epochs", "1"),
    ("max_steps", "Maximum steps (empty for no limit)", ""),
    ("lr", "Learning rate", "0.003"),
    ("batch_size", "Batch size", "4"),
    ("grad_accum", "Gradient accumulation", "1"),
    ("warmup_steps", "Warmup steps", "10"),
    ("eval_every", "Eval every N steps", "25"),
    ("checkpoint_every", "Checkpoint every N steps", "50"),
    ("seed", "Seed", "0"),
];

fn form(values: &HashMap<String, String>, errors: &std::collections::BTreeMap<&'static str, String>) -> TrainingForm {
    TrainingForm {
        fields: FIELDS
            .iter()
            .map(|(name, label, default)| FormField {
                name,
                label,
                value: values.get(*name).cloned().unwrap_or_else(|| default.to_string()),
                error: errors.get(name).cloned(),
            })
            .collect(),
        errors: errors.clone(),
    }
}

async fn render(
    state: &AppState,
    values: &HashMap<String, String>,
    errors: std::collections::BTreeMap<&'static str, String>,
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

/// Check the form; the error map names each bad field.
fn validate(values: &HashMap<String, String>) -> Result<SftConfig, std::collections::BTreeMap<&'static str, String>> {
    let mut errors = std::collections::BTreeMap::new();
    let text = |name: &str| values.get(name).map(|v| v.trim().to_string()).unwrap_or_default();
    let mut whole = |name: &'static str, min: u64, max: u64| -> u64 {
        match text(name).parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) => n,
            _ => {
                errors.insert(name, format!("enter a whole number from {min} to {max}"));
                min
            }
        }
    };
    let epochs = whole("epochs", 1, 1000);
    let batch_size = whole("batch_size", 1, 256);
    let grad_accum = whole("grad_accum", 1, 256);
    let warmup_steps = whole("warmup_steps", 0, 100_000);
    let eval_every = whole("eval_every", 1, 1_000_000);
    let checkpoint_every = whole("checkpoint_every", 1, 1_000_000);
    let seed = whole("seed", 0, u64::MAX);
    let max_steps = match text("max_steps").as_str() {
        "" => None,
        value => match value.parse::<u64>() {
            Ok(n) if n > 0 => Some(n),
            _ => {
                errors.insert("max_steps", "enter a positive whole number or leave it empty".into());
                None
            }
        },
    };
    let lr = match text("lr").parse::<f64>() {
        Ok(lr) if lr > 0.0 && lr < 1.0 => lr,
        _ => {
            errors.insert("lr", "enter a number between 0 and 1 (e.g. 0.003)".into());
            0.0
        }
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(SftConfig {
        epochs: epochs as u32,
        max_steps,
        lr,
        batch_size: batch_size as usize,
        grad_accum: grad_accum as usize,
        warmup_steps,
        eval_every,
        checkpoint_every,
        seed,
        ..SftConfig::default()
    })
}

/// Queue an SFT run on a dataset and wake the runner; shared with the API.
pub async fn enqueue(state: &AppState, dataset_id: String, sft: SftConfig) -> Result<JobRecord, WebError> {
    let id = dataset_id.clone();
    let dataset = state
        .with_db(move |db| {
            db.get_dataset(&id)?.ok_or_else(|| WebError::BadRequest(format!("dataset: no dataset with id {id:?}")))
        })
        .await?;
    let dataset_dir = std::path::PathBuf::from(&dataset.path);
    let tokenizer = tokenizers::Tokenizer::from_file(dataset_dir.join("tokenizer.json"))
        .map_err(|e| WebError::Internal(format!("the dataset's tokenizer: {e}")))?;
    let mut model_config = LlamaConfig::tiny(tokenizer.get_vocab_size(true));
    model_config.max_position_embeddings = model_config.max_position_embeddings.max(sft.max_seq_len);
    let params = params_value(&TrainParams {
        phase: "sft".into(),
        dataset_id,
        dataset_dir,
        base_model: "tiny".into(),
        model_config,
        sft,
        runs_dir: state.config.artifacts_dir().join("runs"),
    });
    let job = state.with_db(move |db| Ok(db.insert_job(JobKind::Train.as_str(), &params, None)?)).await?;
    state.runner.notify();
    Ok(job)
}

async fn start(
    state: web::Data<AppState>,
    values: web::Form<HashMap<String, String>>,
) -> Result<HttpResponse, PageError> {
    let values = values.into_inner();
    let dataset = values.get("dataset").cloned().unwrap_or_default();
    let mut errors = match validate(&values) {
        Ok(sft) if !dataset.is_empty() => match enqueue(&state, dataset.clone(), sft).await {
            Ok(job) => return Ok(see_other(&format!("/jobs/{}", job.id))),
            Err(WebError::BadRequest(message)) => std::collections::BTreeMap::from([("dataset", message)]),
            Err(other) => return Err(other.into()),
        },
        Ok(_) => Default::default(),
        Err(errors) => errors,
    };
    if dataset.is_empty() {
        errors.insert("dataset", "choose a dataset (build one on the Datasets page)".into());
    }
    let body = render(&state, &values, errors).await?.render().map_err(|e| WebError::Internal(e.to_string()))?;
    Ok(HttpResponse::UnprocessableEntity().content_type("text/html; charset=utf-8").body(body))
}
