//! The Models page: trained models with lineage, an Export form per model, and the exports with
//! their files, parity report and a Deploy-to-Ollama form. Both forms queue jobs (`export`,
//! `deploy`) and redirect to the job page, which shows live progress; a rejected form comes back
//! as 422 with the reason on the row it came from. The API shares `enqueue_export` and
//! `enqueue_deploy`, so both doors check the same things.

use actix_web::{web, HttpResponse};
use askama::Template;
use serde::Deserialize;

use super::error::PageError;
use super::pages::{html, see_other};
use super::views::*;
use super::{AppState, WebError};
use crate::deploy::{base_url, DEFAULT_NAME};
use crate::export::{ExportManifest, ExportSource, Quant};
use crate::jobs::deploy::DeployParams;
use crate::jobs::export::ExportParams;
use crate::jobs::{JobKind, JobRecord};
use crate::store::{ExportRow, ModelRow};

/// What an export from the Models page checks by default: the quant Ollama users run.
const DEFAULT_QUANT: Quant = Quant::Q4KM;
/// Held-out prompts and tokens per prompt of the parity checks (the CLI's defaults).
const PARITY_PROMPTS: usize = 4;
const PARITY_MAX_TOKENS: usize = 64;
const MAX_EXPORT_NAME_LEN: usize = 128;

pub fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/models", web::get().to(page))
        .route("/models/{id}/export", web::post().to(export_form))
        .route("/exports/{id}/deploy", web::post().to(deploy_form));
}

/// The quants named by a form or request: known, deduplicated, at least one.
pub fn parse_quants(texts: &[String]) -> Result<Vec<Quant>, WebError> {
    let mut quants = Vec::new();
    for text in texts {
        let quant = Quant::parse(text.trim()).ok_or_else(|| {
            WebError::BadRequest(format!("quants: unknown quant {text:?}; expected f32, f16, q8_0 or q4_k_m"))
        })?;
        if !quants.contains(&quant) {
            quants.push(quant);
        }
    }
    if quants.is_empty() {
        return Err(WebError::BadRequest("quants: choose at least one quant (f32, f16, q8_0 or q4_k_m)".into()));
    }
    Ok(quants)
}

/// Queue an export of a stored model and wake the runner. 404 for an unknown model.
pub async fn enqueue_export(
    state: &AppState,
    model_id: String,
    quants: Vec<Quant>,
    name: Option<String>,
) -> Result<JobRecord, WebError> {
    let name = name.map(|n| n.trim().to_string()).filter(|n| !n.is_empty());
    if name.as_ref().is_some_and(|n| n.chars().count() > MAX_EXPORT_NAME_LEN) {
        return Err(WebError::BadRequest(format!("name: at most {MAX_EXPORT_NAME_LEN} characters")));
    }
    let id = model_id.clone();
    let model = state
        .with_db(move |db| db.get_model(&id)?.ok_or_else(|| WebError::NotFound(format!("no model with id {id:?}"))))
        .await?;
    let params = crate::jobs::export::params_value(&ExportParams {
        source: ExportSource::ModelDir(model.path.into()),
        quants,
        name: name.unwrap_or(model.name),
        model_id: Some(model.id),
        dataset_id: model.dataset_id,
        run_id: model.run_id,
        exports_dir: state.config.artifacts_dir().join("exports"),
        parity_prompts: PARITY_PROMPTS,
        parity_max_tokens: PARITY_MAX_TOKENS,
    });
    let job = state.with_db(move |db| Ok(db.insert_job(JobKind::Export.as_str(), &params, None)?)).await?;
    state.runner.notify();
    Ok(job)
}

/// What a deploy form or request asks for; empty or absent values take the defaults.
#[derive(Debug, Clone, Default)]
pub struct DeployChoice {
    pub name: Option<String>,
    pub host: Option<String>,
    pub quant: Option<String>,
    pub test: bool,
}

fn given(value: &Option<String>) -> Option<String> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty()).map(str::to_string)
}

/// The GGUF quants an export holds, in the order written.
fn gguf_quants(manifest: &ExportManifest) -> Vec<String> {
    manifest.files.iter().filter(|f| f.format == "gguf").filter_map(|f| f.quant.clone()).collect()
}

/// Check a deploy choice against the export: 404 for an unknown export, 409 when its parity
/// failed, 400 naming the field for a bad name, host or quant.
fn deploy_params(export: ExportRow, choice: &DeployChoice, default_host: &str) -> Result<DeployParams, WebError> {
    if !export.parity_passed {
        return Err(WebError::Conflict(format!(
            "export {} failed its parity check and cannot be deployed; export the model again",
            export.id
        )));
    }
    let name = given(&choice.name).unwrap_or_else(|| DEFAULT_NAME.to_string());
    crate::deploy::validate_name(&name).map_err(|e| WebError::BadRequest(format!("name: {e}")))?;
    let host = given(&choice.host).unwrap_or_else(|| default_host.to_string());
    let host = base_url(&host).map_err(|e| WebError::BadRequest(format!("host: {e}")))?;
    let quant = given(&choice.quant);
    if let Some(quant) = &quant {
        let available = serde_json::from_value::<ExportManifest>(export.manifest.clone())
            .map(|m| gguf_quants(&m))
            .unwrap_or_default();
        if !available.contains(quant) {
            let listed = if available.is_empty() { "none".to_string() } else { available.join(", ") };
            return Err(WebError::BadRequest(format!(
                "quant: export {} has no {quant:?} GGUF (it has: {listed})",
                export.id
            )));
        }
    }
    Ok(DeployParams { export_id: export.id, export_dir: export.path.into(), name, host, quant, test: choice.test })
}

/// Queue a deploy of a stored export and wake the runner.
pub async fn enqueue_deploy(state: &AppState, export_id: String, choice: DeployChoice) -> Result<JobRecord, WebError> {
    let default_host = state.ollama_host.clone();
    let job = state
        .with_db(move |db| {
            let export = db
                .get_export(&export_id)?
                .ok_or_else(|| WebError::NotFound(format!("no export with id {export_id:?}")))?;
            let params = crate::jobs::deploy::params_value(&deploy_params(export, &choice, &default_host)?);
            Ok(db.insert_job(JobKind::Deploy.as_str(), &params, None)?)
        })
        .await?;
    state.runner.notify();
    Ok(job)
}

/// A form that was refused, shown again on the row it came from with what was entered.
enum Refused {
    Export { model_id: String, quants: Vec<String>, message: String },
    Deploy { export_id: String, choice: DeployChoice, message: String },
}

fn model_row(row: &ModelRow, refused: Option<&Refused>) -> ModelListRow {
    let metric =
        |name: &str, digits: usize| row.metrics[name].as_f64().map_or("–".to_string(), |v| format!("{v:.digits$}"));
    let (checked, export_error) = match refused {
        Some(Refused::Export { model_id, quants, message }) if *model_id == row.id => {
            (quants.clone(), Some(message.clone()))
        }
        _ => (vec![DEFAULT_QUANT.as_str().to_string()], None),
    };
    ModelListRow {
        id: row.id.clone(),
        name: row.name.clone(),
        base: row.base_model.clone(),
        dataset: row.dataset_id.clone(),
        run: row.run_id.clone(),
        loss: metric("final_loss", 4),
        eval_loss: metric("final_eval_loss", 4),
        speed: metric("tokens_per_second", 0),
        created_at: row.created_at.clone(),
        quants: Quant::ALL
            .iter()
            .map(|q| QuantChoice { value: q.as_str(), checked: checked.iter().any(|c| c == q.as_str()) })
            .collect(),
        export_error,
    }
}

fn export_row(row: &ExportRow, refused: Option<&Refused>, default_host: &str) -> ExportListRow {
    let manifest = serde_json::from_value::<ExportManifest>(row.manifest.clone()).ok();
    let files = manifest
        .iter()
        .flat_map(|m| m.files.iter().filter(|f| f.format == "gguf"))
        .map(|f| ExportFileView {
            quant: f.quant.clone().unwrap_or_else(|| "gguf".into()),
            size: format!("{:.1} MB", f.bytes as f64 / 1e6),
        })
        .collect();
    let checks: Vec<ParityCheckView> = manifest
        .iter()
        .flat_map(|m| m.parity.checks.iter())
        .map(|c| ParityCheckView {
            name: c.name.clone(),
            passed: c.passed,
            required: c.required,
            detail: c.detail.clone(),
        })
        .collect();
    let not_deployable = if row.parity_passed {
        None
    } else {
        let failed = manifest.as_ref().and_then(|m| m.parity.first_failure().map(|c| c.name.clone()));
        Some(match failed {
            Some(name) => format!("Not deployable: the {name} parity check failed."),
            None => "Not deployable: the parity check failed.".to_string(),
        })
    };
    let (choice, deploy_error) = match refused {
        Some(Refused::Deploy { export_id, choice, message }) if *export_id == row.id => {
            (choice.clone(), Some(message.clone()))
        }
        _ => (DeployChoice::default(), None),
    };
    let chosen_quant = given(&choice.quant).unwrap_or_default();
    let mut quants =
        vec![SelectOption { value: String::new(), label: "first GGUF".into(), selected: chosen_quant.is_empty() }];
    quants.extend(manifest.iter().flat_map(gguf_quants).map(|q| SelectOption {
        selected: q == chosen_quant,
        label: q.clone(),
        value: q,
    }));
    ExportListRow {
        id: row.id.clone(),
        model: row.model_id.clone(),
        name: row.name.clone(),
        files,
        parity_passed: row.parity_passed,
        checks,
        not_deployable,
        deploy: DeployFormView {
            name: given(&choice.name).unwrap_or_else(|| DEFAULT_NAME.to_string()),
            host: given(&choice.host).unwrap_or_else(|| default_host.to_string()),
            quants,
            test: choice.test,
            error: deploy_error,
        },
        created_at: row.created_at.clone(),
    }
}

async fn render(state: &AppState, refused: Option<Refused>) -> Result<ModelsPage, WebError> {
    let (models, exports) = state.with_db(|db| Ok((db.list_models()?, db.list_exports()?))).await?;
    Ok(ModelsPage {
        nav: Nav::new("/models"),
        models: models.iter().map(|m| model_row(m, refused.as_ref())).collect(),
        exports: exports.iter().map(|e| export_row(e, refused.as_ref(), &state.ollama_host)).collect(),
    })
}

async fn page(state: web::Data<AppState>) -> Result<HttpResponse, PageError> {
    html(render(&state, None).await?)
}

/// The page again with a refused form's reason, as 422.
async fn refuse(state: &AppState, refused: Refused) -> Result<HttpResponse, PageError> {
    let body =
        render(state, Some(refused)).await?.render().map_err(|e| WebError::Internal(format!("template: {e}")))?;
    Ok(HttpResponse::UnprocessableEntity().content_type("text/html; charset=utf-8").body(body))
}

/// A validation message without the API's `field: ` prefix (the form shows it by the field).
fn form_message(message: String) -> String {
    match message.split_once(": ") {
        Some((field, rest)) if matches!(field, "quants" | "name" | "host" | "quant") => rest.to_string(),
        _ => message,
    }
}

/// `quant=q8_0&quant=q4_k_m` (checkboxes; repeated keys).
async fn export_form(
    state: web::Data<AppState>,
    id: web::Path<String>,
    fields: web::Form<Vec<(String, String)>>,
) -> Result<HttpResponse, PageError> {
    let model_id = id.into_inner();
    let quants: Vec<String> =
        fields.into_inner().into_iter().filter(|(key, _)| key == "quant").map(|(_, value)| value).collect();
    let outcome = match parse_quants(&quants) {
        Ok(parsed) => enqueue_export(&state, model_id.clone(), parsed, None).await,
        Err(error) => Err(error),
    };
    match outcome {
        Ok(job) => Ok(see_other(&format!("/jobs/{}", job.id))),
        Err(WebError::BadRequest(message)) => {
            refuse(&state, Refused::Export { model_id, quants, message: form_message(message) }).await
        }
        Err(other) => Err(other.into()),
    }
}

#[derive(Debug, Deserialize)]
struct DeployFormInput {
    name: Option<String>,
    host: Option<String>,
    quant: Option<String>,
    /// A checkbox: present when checked.
    test: Option<String>,
}

async fn deploy_form(
    state: web::Data<AppState>,
    id: web::Path<String>,
    input: web::Form<DeployFormInput>,
) -> Result<HttpResponse, PageError> {
    let export_id = id.into_inner();
    let input = input.into_inner();
    let choice = DeployChoice { name: input.name, host: input.host, quant: input.quant, test: input.test.is_some() };
    match enqueue_deploy(&state, export_id.clone(), choice.clone()).await {
        Ok(job) => Ok(see_other(&format!("/jobs/{}", job.id))),
        Err(WebError::BadRequest(message) | WebError::Conflict(message)) => {
            refuse(&state, Refused::Deploy { export_id, choice, message: form_message(message) }).await
        }
        Err(other) => Err(other.into()),
    }
}
