//! The Datasets pages: the build form (a `build_dataset` job; errors beside each field), the
//! list, one dataset's statistics as server-rendered SVG charts, and downloads of its files.

use std::collections::HashMap;

use actix_web::{web, HttpResponse};
use askama::Template;

use super::error::PageError;
use super::pages::{html, see_other};
use super::views::*;
use super::{AppState, WebError};
use crate::dataset::{datasets_dir, DatasetConfig, FILES};
use crate::jobs::build_dataset::{params_value, BuildParams};
use crate::jobs::{JobKind, JobRecord};
use crate::model::source::ModelSource;
use crate::store::DatasetRow;
use crate::traces::Source;

pub fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/datasets", web::get().to(list))
        .route("/datasets/build", web::post().to(build))
        .route("/datasets/{id}", web::get().to(show))
        .route("/datasets/{id}/files/{name}", web::get().to(download));
}

fn default_form() -> DatasetForm {
    DatasetForm {
        name: "dataset".into(),
        model: "tiny".into(),
        min_tool_calls: "0".into(),
        real_weight: "1".into(),
        val_ratio: "0.05".into(),
        test_ratio: "0.05".into(),
        max_seq_len: "2048".into(),
        seed: "0".into(),
        ..DatasetForm::default()
    }
}

fn list_row(row: &DatasetRow) -> DatasetListRow {
    let stats = &row.stats;
    DatasetListRow {
        id: row.id.clone(),
        name: row.name.clone(),
        model: match &row.config["model"]["path"] {
            serde_json::Value::String(path) => path.clone(),
            _ => row.config["model"]["kind"].as_str().unwrap_or("").to_string(),
        },
        train: stats["examples"]["train"].to_string(),
        val: stats["examples"]["val"].to_string(),
        test: stats["examples"]["test"].to_string(),
        coverage: format!("{:.1}%", stats["mask_coverage"].as_f64().unwrap_or(0.0) * 100.0),
        created_at: row.created_at.clone(),
    }
}

async fn render_list(state: &AppState, form: DatasetForm) -> Result<DatasetsPage, WebError> {
    let rows = state.with_db(|db| Ok(db.list_datasets()?)).await?;
    Ok(DatasetsPage {
        nav: Nav::new("/datasets"),
        form,
        models_dir: state.config.data_dir().join("models").display().to_string(),
        datasets: rows.iter().map(list_row).collect(),
    })
}

async fn list(state: web::Data<AppState>) -> Result<HttpResponse, PageError> {
    html(render_list(&state, default_form()).await?)
}

/// Resolve a model named in a web form or the API: `tiny`, or a path under `<data dir>/models`.
pub fn confined_model(state: &AppState, text: &str) -> Result<ModelSource, String> {
    let text = text.trim();
    if text == "tiny" || text.is_empty() {
        return Ok(ModelSource::Tiny);
    }
    let models = state.config.data_dir().join("models");
    let candidate =
        if std::path::Path::new(text).is_absolute() { std::path::PathBuf::from(text) } else { models.join(text) };
    let resolved = candidate.canonicalize().map_err(|_| format!("{text}: no such model under {}", models.display()))?;
    let root = models.canonicalize().map_err(|_| format!("{} does not exist; put models there", models.display()))?;
    if !resolved.starts_with(&root) {
        return Err(format!("{text}: models must be under {}", models.display()));
    }
    ModelSource::parse(&resolved.display().to_string()).map_err(|e| e.to_string())
}

/// The form's fields as a config, or the form back with an error beside each bad field.
fn validate(state: &AppState, fields: &HashMap<String, String>) -> Result<DatasetConfig, DatasetForm> {
    let text = |key: &str| fields.get(key).map(|v| v.trim().to_string()).unwrap_or_default();
    let mut form = DatasetForm {
        name: text("name"),
        model: text("model"),
        sources: text("sources"),
        categories: text("categories"),
        min_tool_calls: text("min_tool_calls"),
        exclude_failed: fields.get("exclude_failed").is_some_and(|v| v == "on" || v == "true"),
        real_weight: text("real_weight"),
        val_ratio: text("val_ratio"),
        test_ratio: text("test_ratio"),
        max_seq_len: text("max_seq_len"),
        seed: text("seed"),
        errors: Default::default(),
    };
    let model = confined_model(state, &form.model).map_err(|e| form.errors.insert("model", e)).ok();
    let mut sources = Vec::new();
    for part in form.sources.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match Source::parse(part) {
            Some(source) => sources.push(source),
            None => {
                form.errors.insert(
                    "sources",
                    format!("{part:?} is not a source (synthetic, claude_code, dpo_import, served, import)"),
                );
            }
        }
    }
    let mut number = |key: &'static str, value: &str| -> Option<f64> {
        match value.parse::<f64>() {
            Ok(n) if n.is_finite() && n >= 0.0 => Some(n),
            _ => {
                form.errors.insert(key, "enter a non-negative number".into());
                None
            }
        }
    };
    let min_tool_calls = number("min_tool_calls", &form.min_tool_calls.clone());
    let real_weight = number("real_weight", &form.real_weight.clone());
    let val_ratio = number("val_ratio", &form.val_ratio.clone());
    let test_ratio = number("test_ratio", &form.test_ratio.clone());
    let max_seq_len = number("max_seq_len", &form.max_seq_len.clone());
    let seed = number("seed", &form.seed.clone());
    let (
        Some(model),
        Some(min_tool_calls),
        Some(real_weight),
        Some(val_ratio),
        Some(test_ratio),
        Some(max_seq_len),
        Some(seed),
    ) = (model, min_tool_calls, real_weight, val_ratio, test_ratio, max_seq_len, seed)
    else {
        return Err(form);
    };
    if !form.errors.is_empty() {
        return Err(form);
    }
    let config = DatasetConfig {
        name: form.name.clone(),
        model,
        sources,
        categories: form.categories.split(',').map(str::trim).filter(|c| !c.is_empty()).map(str::to_string).collect(),
        min_tool_calls: min_tool_calls as usize,
        exclude_failed: form.exclude_failed,
        real_weight: real_weight as u32,
        val_ratio,
        test_ratio,
        max_seq_len: max_seq_len as usize,
        seed: seed as u64,
    };
    if let Err(error) = config.validate() {
        let message = error.to_string();
        let field = ["name", "val_ratio", "test_ratio", "max_seq_len", "real_weight"]
            .into_iter()
            .find(|f| message.starts_with(&format!("{f}:")))
            .unwrap_or("name");
        form.errors.insert(field, message);
        return Err(form);
    }
    Ok(config)
}

/// Queue a dataset build and wake the runner; shared with the API.
pub async fn enqueue(state: &AppState, config: DatasetConfig) -> Result<JobRecord, WebError> {
    let params = params_value(&BuildParams { config, datasets_dir: datasets_dir(&state.config.artifacts_dir()) });
    let job = state.with_db(move |db| Ok(db.insert_job(JobKind::BuildDataset.as_str(), &params, None)?)).await?;
    state.runner.notify();
    Ok(job)
}

async fn build(
    state: web::Data<AppState>,
    fields: web::Form<HashMap<String, String>>,
) -> Result<HttpResponse, PageError> {
    match validate(&state, &fields) {
        Ok(config) => {
            let job = enqueue(&state, config).await?;
            Ok(see_other(&format!("/jobs/{}", job.id)))
        }
        Err(form) => {
            let body = render_list(&state, form).await?.render().map_err(|e| WebError::Internal(e.to_string()))?;
            Ok(HttpResponse::UnprocessableEntity().content_type("text/html; charset=utf-8").body(body))
        }
    }
}

async fn find(state: &AppState, id: String) -> Result<DatasetRow, WebError> {
    state
        .with_db(move |db| db.get_dataset(&id)?.ok_or_else(|| WebError::NotFound(format!("no dataset with id {id:?}"))))
        .await
}

fn chart_rows(value: &serde_json::Value) -> Vec<(String, f64)> {
    value.as_object().into_iter().flatten().map(|(k, v)| (k.clone(), v.as_f64().unwrap_or(0.0))).collect()
}

async fn show(state: web::Data<AppState>, id: web::Path<String>) -> Result<HttpResponse, PageError> {
    let row = find(&state, id.into_inner()).await?;
    let stats = &row.stats;
    let number = |v: &serde_json::Value| v.to_string();
    let histogram: Vec<(String, f64)> = stats["token_histogram"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|bin| (format!("≤ {}", bin["up_to"]), bin["count"].as_f64().unwrap_or(0.0)))
        .collect();
    let splits = vec![
        ("train".to_string(), stats["examples"]["train"].as_f64().unwrap_or(0.0)),
        ("val".to_string(), stats["examples"]["val"].as_f64().unwrap_or(0.0)),
        ("test".to_string(), stats["examples"]["test"].as_f64().unwrap_or(0.0)),
    ];
    let charts = vec![
        BarChart::new("Token lengths (examples per bin)", &histogram),
        BarChart::new("Examples per split", &splits),
        BarChart::new("Traces per category", &chart_rows(&stats["by_category"])),
        BarChart::new("Traces per source", &chart_rows(&stats["by_source"])),
        BarChart::new("Tool calls per tool", &chart_rows(&stats["by_tool"])),
    ];
    let dir = std::path::PathBuf::from(&row.path);
    let files = FILES
        .iter()
        .map(|name| FileRow {
            name: name.to_string(),
            bytes: std::fs::metadata(dir.join(name)).map(|m| m.len()).unwrap_or(0),
            sha256: stats["sha256"][name].as_str().unwrap_or("").to_string(),
        })
        .collect();
    let list = list_row(&row);
    html(DatasetPage {
        nav: Nav::new("/datasets"),
        id: row.id.clone(),
        name: row.name.clone(),
        model: list.model,
        template: stats["template"].as_str().unwrap_or("").to_string(),
        end_of_turn: stats["end_of_turn"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        train: list.train,
        weighted_train: number(&stats["weighted_train"]),
        val: list.val,
        test: list.test,
        tokens_total: number(&stats["tokens_total"]),
        tokens_trained: number(&stats["tokens_trained"]),
        coverage: list.coverage,
        mean_tokens: format!("{:.0}", stats["mean_tokens"].as_f64().unwrap_or(0.0)),
        max_tokens: number(&stats["max_tokens"]),
        truncated: number(&stats["truncated"]),
        dropped: number(&stats["dropped"]),
        vocab_size: number(&stats["vocab_size"]),
        dir: row.path.clone(),
        charts,
        files,
    })
}

/// Serve one of a dataset's files; only names from the fixed list, never a path.
pub async fn dataset_file(state: &AppState, id: String, name: &str) -> Result<HttpResponse, WebError> {
    let Some(name) = FILES.iter().find(|f| **f == name) else {
        return Err(WebError::NotFound(format!("datasets have no file {name:?}")));
    };
    let row = find(state, id).await?;
    let path = std::path::PathBuf::from(&row.path).join(name);
    let bytes = web::block(move || std::fs::read(path))
        .await
        .map_err(|e| WebError::Internal(e.to_string()))?
        .map_err(|e| WebError::Internal(e.to_string()))?;
    let content_type = match name.rsplit('.').next() {
        Some("jsonl") => "application/x-ndjson",
        Some("json") => "application/json",
        Some("jinja") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    };
    Ok(HttpResponse::Ok()
        .content_type(content_type)
        .insert_header(("Content-Disposition", format!("attachment; filename=\"{name}\"")))
        .body(bytes))
}

async fn download(state: web::Data<AppState>, path: web::Path<(String, String)>) -> Result<HttpResponse, PageError> {
    let (id, name) = path.into_inner();
    Ok(dataset_file(&state, id, &name).await?)
}
