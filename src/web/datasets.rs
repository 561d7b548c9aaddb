//! The Datasets pages: the build form (a `build_dataset` job; errors beside each field), the
//! list, one dataset's statistics as server-rendered SVG charts, and downloads of its files.

use std::collections::HashMap;

use actix_web::{web, HttpResponse};
use askama::Template;

use super::error::{ApiError, ErrorBody, PageError};
use super::shared::*;
use super::{AppState, WebError};
use crate::dataset::FILES;
use crate::jobs::requests::{DatasetRequest, ModelScope};
use crate::jobs::JobRecord;
use crate::jobs::{JobId, JobParams};
use crate::store::DatasetRow;

pub fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/datasets", web::get().to(list))
        .route("/datasets/build", web::post().to(build))
        .route("/datasets/{id}", web::get().to(show))
        .route("/datasets/{id}/files/{name}", web::get().to(download));
}

/// Routes under `/api`.
pub fn api_routes(config: &mut web::ServiceConfig) {
    config
        .route("/datasets", web::get().to(list_datasets))
        .route("/datasets", web::post().to(build_dataset))
        .route("/datasets/{id}", web::get().to(get_dataset))
        .route("/datasets/{id}/files/{name}", web::get().to(get_dataset_file));
}

fn default_form() -> DatasetForm {
    DatasetForm {
        name: "dataset".into(),
        model: "tiny".into(),
        min_tool_calls: "0".into(),
        real_weight: "1".into(),
        openings: "0".into(),
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

/// The form's text as a request; a value that is not a number is reported beside its field.
/// Fields that are not numbers keep their defaults in the request, so the request's own rules
/// still report every other bad field in the same answer.
fn parse(fields: &HashMap<String, String>) -> (DatasetForm, DatasetRequest) {
    let text = |key: &str| fields.get(key).map(|v| v.trim().to_string()).unwrap_or_default();
    let mut form = DatasetForm {
        name: text("name"),
        model: text("model"),
        sources: text("sources"),
        categories: text("categories"),
        min_tool_calls: text("min_tool_calls"),
        exclude_failed: fields.get("exclude_failed").is_some_and(|v| v == "on" || v == "true"),
        real_weight: text("real_weight"),
        // A form from before openings existed leaves it out: none.
        openings: Some(text("openings")).filter(|t| !t.is_empty()).unwrap_or_else(|| "0".into()),
        val_ratio: text("val_ratio"),
        test_ratio: text("test_ratio"),
        max_seq_len: text("max_seq_len"),
        seed: text("seed"),
        errors: Default::default(),
    };
    let mut request = DatasetRequest {
        name: form.name.clone(),
        model: form.model.clone(),
        sources: form.sources.split(',').map(str::to_string).collect(),
        categories: form.categories.split(',').map(str::to_string).collect(),
        exclude_failed: form.exclude_failed,
        ..DatasetRequest::default()
    };
    fn number<T: std::str::FromStr>(form: &mut DatasetForm, name: &'static str, target: &mut T) {
        let text = match name {
            "min_tool_calls" => &form.min_tool_calls,
            "real_weight" => &form.real_weight,
            "openings" => &form.openings,
            "val_ratio" => &form.val_ratio,
            "test_ratio" => &form.test_ratio,
            "max_seq_len" => &form.max_seq_len,
            _ => &form.seed,
        };
        match text.parse::<T>() {
            Ok(value) => *target = value,
            Err(_) => {
                form.errors.insert(name, "enter a non-negative number".into());
            }
        }
    }
    number(&mut form, "min_tool_calls", &mut request.min_tool_calls);
    number(&mut form, "real_weight", &mut request.real_weight);
    number(&mut form, "openings", &mut request.openings);
    number(&mut form, "val_ratio", &mut request.val_ratio);
    number(&mut form, "test_ratio", &mut request.test_ratio);
    number(&mut form, "max_seq_len", &mut request.max_seq_len);
    number(&mut form, "seed", &mut request.seed);
    (form, request)
}

/// Resolve a dataset request (the model path is checked on the blocking pool) and queue the
/// build; shared with the API.
pub async fn enqueue(state: &AppState, request: DatasetRequest) -> Result<JobId, WebError> {
    let config = state.config.clone();
    let params = state.blocking(move |_| request.resolve(&config, &ModelScope::web(&config))).await?;
    state.submit(JobParams::BuildDataset(params)).await
}

async fn build(
    state: web::Data<AppState>,
    fields: web::Form<HashMap<String, String>>,
) -> Result<HttpResponse, PageError> {
    let (mut form, request) = parse(&fields);
    let outcome = if form.errors.is_empty() {
        enqueue(&state, request).await
    } else {
        // Not a number somewhere: check the rest too, but queue nothing.
        let config = state.config.clone();
        match state.blocking(move |_| request.resolve(&config, &ModelScope::web(&config))).await {
            Ok(_) => Err(WebError::Fields(Vec::new())),
            Err(error) => Err(error),
        }
    };
    match outcome {
        Ok(id) => Ok(see_other(&format!("/jobs/{id}"))),
        Err(WebError::Fields(fields)) => {
            for field in fields {
                form.errors.entry(field.field).or_insert(field.message);
            }
            let body = render_list(&state, form).await?.render().map_err(|e| WebError::Internal(e.to_string()))?;
            Ok(HttpResponse::UnprocessableEntity().content_type("text/html; charset=utf-8").body(body))
        }
        Err(other) => Err(other.into()),
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

/// The build form's values and errors by field name.
#[derive(Default)]
pub struct DatasetForm {
    pub name: String,
    pub model: String,
    pub sources: String,
    pub categories: String,
    pub min_tool_calls: String,
    pub exclude_failed: bool,
    pub real_weight: String,
    pub openings: String,
    pub val_ratio: String,
    pub test_ratio: String,
    pub max_seq_len: String,
    pub seed: String,
    pub errors: std::collections::BTreeMap<&'static str, String>,
}

pub struct DatasetListRow {
    pub id: String,
    pub name: String,
    pub model: String,
    pub train: String,
    pub val: String,
    pub test: String,
    pub coverage: String,
    pub created_at: String,
}

#[derive(Template)]
#[template(path = "pages/datasets.html")]
pub struct DatasetsPage {
    pub nav: Nav,
    pub form: DatasetForm,
    pub models_dir: String,
    pub datasets: Vec<DatasetListRow>,
}

pub struct FileRow {
    pub name: String,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Template)]
#[template(path = "pages/dataset.html")]
pub struct DatasetPage {
    pub nav: Nav,
    pub id: String,
    pub name: String,
    pub model: String,
    pub template: String,
    pub end_of_turn: String,
    pub train: String,
    pub weighted_train: String,
    pub val: String,
    pub test: String,
    pub tokens_total: String,
    pub tokens_trained: String,
    pub coverage: String,
    pub mean_tokens: String,
    pub max_tokens: String,
    pub truncated: String,
    pub dropped: String,
    pub vocab_size: String,
    pub dir: String,
    pub charts: Vec<BarChart>,
    pub files: Vec<FileRow>,
}

/// Queue a dataset build (the options of `understudy build-dataset`, with the same defaults).
#[utoipa::path(post, path = "/api/datasets", request_body = DatasetRequest,
    responses((status = 202, body = JobRecord), (status = 400, body = ErrorBody)))]
pub async fn build_dataset(
    state: web::Data<AppState>,
    request: web::Json<DatasetRequest>,
) -> Result<HttpResponse, ApiError> {
    let id = enqueue(&state, request.into_inner()).await?;
    accepted(&state, id).await
}

/// Built datasets, newest first.
#[utoipa::path(get, path = "/api/datasets", responses((status = 200, body = Vec<crate::store::DatasetRow>)))]
pub async fn list_datasets(state: web::Data<AppState>) -> Result<web::Json<Vec<crate::store::DatasetRow>>, ApiError> {
    Ok(web::Json(state.with_db(|db| Ok(db.list_datasets()?)).await?))
}

/// One dataset: its config, statistics (with file checksums) and directory.
#[utoipa::path(get, path = "/api/datasets/{id}", params(("id" = String, Path)),
    responses((status = 200, body = crate::store::DatasetRow), (status = 404, body = ErrorBody)))]
pub async fn get_dataset(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<web::Json<crate::store::DatasetRow>, ApiError> {
    let id = id.into_inner();
    let row = state
        .with_db(move |db| db.get_dataset(&id)?.ok_or_else(|| WebError::NotFound(format!("no dataset with id {id:?}"))))
        .await?;
    Ok(web::Json(row))
}

/// Download one of a dataset's files (config.json, sft.jsonl, tokenizer.json, train.tokens, ...).
#[utoipa::path(get, path = "/api/datasets/{id}/files/{name}", params(("id" = String, Path), ("name" = String, Path)),
    responses((status = 200, description = "The file"), (status = 404, body = ErrorBody)))]
pub async fn get_dataset_file(
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (id, name) = path.into_inner();
    Ok(dataset_file(&state, id, &name).await?)
}
