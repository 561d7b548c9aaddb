//! The Models page: trained models with lineage, an Export form per model, and the exports with
//! their files, parity report and a Deploy-to-Ollama form. Both forms queue jobs (`export`,
//! `deploy`) and redirect to the job page, which shows live progress; a rejected form comes back
//! as 422 with the reason on the row it came from. The API shares `enqueue_export` and
//! `enqueue_deploy`, so both doors check the same things.

use actix_web::{web, HttpResponse};
use askama::Template;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody, PageError};
use super::shared::*;
use super::traces::{message_views, MessageView};
use super::{AppState, WebError};
use crate::deploy::DEFAULT_NAME;
use crate::export::{ExportManifest, Quant};
use crate::jobs::requests::{self, given, DeployRequest, EvalRequest, ExportRequest, ExportTarget, ModelScope};
use crate::jobs::JobRecord;
use crate::jobs::{JobId, JobParams};
use crate::store::{EvalRunRow, ExportRow, ModelRow};
use crate::traces::wire::{messages_from_wire, WireMessage};

/// What an export from the Models page checks by default: the quant Ollama users run.
pub const DEFAULT_QUANT: Quant = Quant::Q4KM;

pub fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/models", web::get().to(page))
        .route("/models/{id}/export", web::post().to(export_form))
        .route("/models/{id}/eval", web::post().to(eval_form))
        .route("/exports/{id}/deploy", web::post().to(deploy_form))
        .route("/evals/{id}", web::get().to(eval_page))
        .route("/evals/{id}/cases/{position}", web::get().to(eval_case_page));
}

/// Routes under `/api`.
pub fn api_routes(config: &mut web::ServiceConfig) {
    config
        .route("/models", web::get().to(list_models))
        .route("/models/{id}", web::get().to(get_model))
        .route("/models/{id}/export", web::post().to(start_export))
        .route("/exports", web::get().to(list_exports))
        .route("/exports/{id}/deploy", web::post().to(start_deploy))
        .route("/evals", web::get().to(list_evals))
        .route("/evals", web::post().to(start_eval))
        .route("/evals/{id}", web::get().to(get_eval));
}

/// Resolve an export request off the async workers and queue it; shared with the API.
pub async fn enqueue_export(state: &AppState, request: ExportRequest) -> Result<JobId, WebError> {
    let config = state.config.clone();
    let params = state.blocking(move |db| request.resolve(db, &config)).await?;
    state.submit(JobParams::Export(params)).await
}

/// Resolve a deploy request (checked against the export) and queue it; shared with the API.
pub async fn enqueue_deploy(state: &AppState, request: DeployRequest) -> Result<JobId, WebError> {
    let default_host = state.ollama_host.clone();
    let params = state.blocking(move |db| request.resolve(db, &default_host)).await?;
    state.submit(JobParams::Deploy(params)).await
}

/// The GGUF quants an export holds, in the order written.
fn gguf_quants(manifest: &ExportManifest) -> Vec<String> {
    manifest.files.iter().filter(|f| f.format == "gguf").filter_map(|f| f.quant.clone()).collect()
}

/// A form that was refused, shown again on the row it came from with what was entered.
enum Refused {
    Export { model_id: String, quants: Vec<String>, message: String },
    Deploy { export_id: String, choice: DeployRequest, message: String },
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
        champion: row.is_champion,
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
        _ => (DeployRequest::default(), None),
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
    let (models, exports, evals, promotions) = state
        .with_db(|db| Ok((db.list_models()?, db.list_exports()?, db.list_eval_runs(50)?, db.list_promotions(20)?)))
        .await?;
    let champion = models.iter().find(|m| m.is_champion).map(|m| m.id.clone());
    Ok(ModelsPage {
        nav: Nav::new("/models"),
        models: models.iter().map(|m| model_row(m, refused.as_ref())).collect(),
        exports: exports.iter().map(|e| export_row(e, refused.as_ref(), &state.ollama_host)).collect(),
        evals: evals.iter().map(|run| eval_row(run, champion.as_deref())).collect(),
        promotions: promotions
            .into_iter()
            .map(|p| PromotionView {
                model: p.model_id,
                promoted: p.promoted,
                reason: p.reason,
                created_at: p.created_at,
            })
            .collect(),
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

/// A refused form's reason, without the field name (the form shows it by the field).
fn form_message(error: WebError) -> Result<String, WebError> {
    match error {
        WebError::Fields(fields) => Ok(fields.into_iter().map(|f| f.message).collect::<Vec<_>>().join("; ")),
        WebError::Conflict(message) => Ok(message),
        other => Err(other),
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
    let request = ExportRequest::new(ExportTarget::Stored(model_id.clone()), quants.clone(), None);
    match enqueue_export(&state, request).await {
        Ok(id) => Ok(see_other(&format!("/jobs/{id}"))),
        Err(error) => {
            let message = form_message(error)?;
            refuse(&state, Refused::Export { model_id, quants, message }).await
        }
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
    let choice = DeployRequest {
        export: Some(export_id.clone()),
        name: input.name,
        host: input.host,
        quant: input.quant,
        test: input.test.is_some(),
    };
    match enqueue_deploy(&state, choice.clone()).await {
        Ok(id) => Ok(see_other(&format!("/jobs/{id}"))),
        Err(error) => {
            let message = form_message(error)?;
            refuse(&state, Refused::Deploy { export_id, choice, message }).await
        }
    }
}

pub struct ModelListRow {
    pub id: String,
    pub name: String,
    pub base: String,
    pub dataset: Option<String>,
    pub run: Option<String>,
    pub loss: String,
    pub eval_loss: String,
    pub speed: String,
    pub created_at: String,
    pub champion: bool,
    /// The export form's checkboxes.
    pub quants: Vec<QuantChoice>,
    pub export_error: Option<String>,
}

pub struct QuantChoice {
    pub value: &'static str,
    pub checked: bool,
}

pub struct ExportFileView {
    pub quant: String,
    pub size: String,
}

pub struct ParityCheckView {
    pub name: String,
    pub passed: bool,
    pub required: bool,
    pub detail: String,
}

/// The deploy form's values (defaults, or what a refused post entered) and its error.
pub struct DeployFormView {
    pub name: String,
    pub host: String,
    pub quants: Vec<SelectOption>,
    pub test: bool,
    pub error: Option<String>,
}

pub struct ExportListRow {
    pub id: String,
    pub model: Option<String>,
    pub name: String,
    pub files: Vec<ExportFileView>,
    pub parity_passed: bool,
    pub checks: Vec<ParityCheckView>,
    /// Why there is no deploy form (the parity check failed).
    pub not_deployable: Option<String>,
    pub deploy: DeployFormView,
    pub created_at: String,
}

#[derive(Template)]
#[template(path = "pages/models.html")]
pub struct ModelsPage {
    pub nav: Nav,
    pub models: Vec<ModelListRow>,
    pub exports: Vec<ExportListRow>,
    pub evals: Vec<EvalRow>,
    pub promotions: Vec<PromotionView>,
}

/// One eval run side by side with the others: each rate with its Wilson interval.
pub struct EvalRow {
    pub id: String,
    pub target: String,
    pub champion: bool,
    pub suites: String,
    pub cases: String,
    pub arguments_valid: String,
    pub first_tool: String,
    pub success: String,
    pub parsed: String,
    pub similarity: String,
    pub finished: bool,
}

pub struct PromotionView {
    pub model: String,
    pub promoted: bool,
    pub reason: String,
    pub created_at: String,
}

fn rate_cell(summary: &serde_json::Value, name: &str) -> String {
    let rate = &summary["overall"][name];
    match (rate["rate"].as_f64(), rate["n"].as_u64()) {
        (Some(value), Some(n)) if n > 0 => format!(
            "{:.0}% [{:.0}–{:.0}]",
            value * 100.0,
            rate["low"].as_f64().unwrap_or(0.0) * 100.0,
            rate["high"].as_f64().unwrap_or(0.0) * 100.0
        ),
        _ => "–".into(),
    }
}

fn eval_row(run: &EvalRunRow, champion: Option<&str>) -> EvalRow {
    let summary = run.summary.clone().unwrap_or_default();
    EvalRow {
        id: run.id.clone(),
        target: run.target.clone(),
        champion: run.model_id.is_some() && run.model_id.as_deref() == champion,
        suites: run.suites.join(", "),
        cases: summary["overall"]["cases"].as_u64().map_or("–".into(), |n| n.to_string()),
        arguments_valid: rate_cell(&summary, "arguments_valid"),
        first_tool: rate_cell(&summary, "first_tool"),
        success: rate_cell(&summary, "success"),
        parsed: rate_cell(&summary, "parsed"),
        similarity: summary["overall"]["similarity"].as_f64().map_or("–".into(), |v| format!("{v:.2}")),
        finished: run.finished_at.is_some(),
    }
}

/// Trained models with lineage, newest first.
#[utoipa::path(get, path = "/api/models", responses((status = 200, body = Vec<crate::store::ModelRow>)))]
pub async fn list_models(state: web::Data<AppState>) -> Result<web::Json<Vec<crate::store::ModelRow>>, ApiError> {
    Ok(web::Json(state.with_db(|db| Ok(db.list_models()?)).await?))
}

/// One model.
#[utoipa::path(get, path = "/api/models/{id}", params(("id" = String, Path)),
    responses((status = 200, body = crate::store::ModelRow), (status = 404, body = ErrorBody)))]
pub async fn get_model(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<web::Json<crate::store::ModelRow>, ApiError> {
    let id = id.into_inner();
    let row = state
        .with_db(move |db| db.get_model(&id)?.ok_or_else(|| WebError::NotFound(format!("no model with id {id:?}"))))
        .await?;
    Ok(web::Json(row))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct ExportModelRequest {
    /// GGUF quants to write: f32, f16, q8_0, q4_k_m (default: ["q4_k_m"]).
    pub quants: Option<Vec<String>>,
    /// Name of the export (file names, GGUF general.name); default: the model's name.
    pub name: Option<String>,
}

/// Export a model (an `export` job): HF directory, one GGUF per quant, Modelfile, parity
/// report. The export and its parity appear under /api/exports, also when parity fails.
#[utoipa::path(post, path = "/api/models/{id}/export", params(("id" = String, Path)), request_body = ExportModelRequest,
    responses((status = 202, body = JobRecord), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn start_export(
    state: web::Data<AppState>,
    id: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let request: ExportModelRequest = optional_json(&body)?;
    let quants = request.quants.unwrap_or_else(|| vec![DEFAULT_QUANT.as_str().to_string()]);
    let request = ExportRequest::new(ExportTarget::Stored(id.into_inner()), quants, request.name);
    let id = enqueue_export(&state, request).await?;
    accepted(&state, id).await
}

/// Exports with their manifest (files, Ollama settings, parity report), newest first.
#[utoipa::path(get, path = "/api/exports", responses((status = 200, body = Vec<crate::store::ExportRow>)))]
pub async fn list_exports(state: web::Data<AppState>) -> Result<web::Json<Vec<crate::store::ExportRow>>, ApiError> {
    Ok(web::Json(state.with_db(|db| Ok(db.list_exports()?)).await?))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct DeployBody {
    /// The Ollama model name, tagged with the export id and `latest` (default: cc-claude-agent).
    pub name: Option<String>,
    /// Ollama's address, a URL or host:port (default: the server's OLLAMA_HOST, else http://127.0.0.1:11434).
    pub host: Option<String>,
    /// The GGUF quant to deploy (default: the export's first GGUF).
    pub quant: Option<String>,
    /// Send a sample prompt with the default tools through Ollama's chat API afterwards.
    #[serde(default)]
    pub test: bool,
}

/// Register an export with Ollama (a `deploy` job; the result is the deploy report). An export
/// whose parity check failed cannot be deployed (409).
#[utoipa::path(post, path = "/api/exports/{id}/deploy", params(("id" = String, Path)), request_body = DeployBody,
    responses((status = 202, body = JobRecord), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn start_deploy(
    state: web::Data<AppState>,
    id: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let body: DeployBody = optional_json(&body)?;
    let request = requests::DeployRequest {
        export: Some(id.into_inner()),
        name: body.name,
        host: body.host,
        quant: body.quant,
        test: body.test,
    };
    let id = enqueue_deploy(&state, request).await?;
    accepted(&state, id).await
}

/// Resolve an eval request (suites, model) off the async workers and queue it; shared with the
/// API. The web may only name stored models.
pub async fn enqueue_eval(state: &AppState, request: EvalRequest) -> Result<JobId, WebError> {
    let config = state.config.clone();
    let params = state.blocking(move |db| request.resolve(db, &ModelScope::web(&config))).await?;
    state.submit(JobParams::Eval(params)).await
}

/// The Models page's Evaluate button: the model on `heldout`.
async fn eval_form(state: web::Data<AppState>, id: web::Path<String>) -> Result<HttpResponse, PageError> {
    let request = EvalRequest { model: Some(id.into_inner()), ..EvalRequest::default() };
    let id = enqueue_eval(&state, request).await?;
    Ok(see_other(&format!("/jobs/{id}")))
}

/// Evaluate a stored model or an OpenAI-compatible endpoint (an `eval` job) on suites; the
/// result (overall and per-category metrics with Wilson intervals) is the job's result and
/// appears under /api/evals.
#[utoipa::path(post, path = "/api/evals", request_body = EvalRequest,
    responses((status = 202, body = JobRecord), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn start_eval(state: web::Data<AppState>, request: web::Json<EvalRequest>) -> Result<HttpResponse, ApiError> {
    let id = enqueue_eval(&state, request.into_inner()).await?;
    accepted(&state, id).await
}

/// Eval runs, newest first, with their summaries.
#[utoipa::path(get, path = "/api/evals", responses((status = 200, body = Vec<crate::store::EvalRunRow>)))]
pub async fn list_evals(state: web::Data<AppState>) -> Result<web::Json<Vec<EvalRunRow>>, ApiError> {
    Ok(web::Json(state.with_db(|db| Ok(db.list_eval_runs(200)?)).await?))
}

#[derive(Serialize, ToSchema)]
pub struct EvalDetail {
    pub run: EvalRunRow,
    /// Every case: its score and its episode (the transcript as OpenAI messages).
    pub cases: Vec<crate::store::EvalCaseRow>,
}

/// One eval run with every case's score and episode.
#[utoipa::path(get, path = "/api/evals/{id}", params(("id" = String, Path)),
    responses((status = 200, body = EvalDetail), (status = 404, body = ErrorBody)))]
pub async fn get_eval(state: web::Data<AppState>, id: web::Path<String>) -> Result<web::Json<EvalDetail>, ApiError> {
    let id = id.into_inner();
    let detail = state
        .with_db(move |db| {
            let run = db.get_eval_run(&id)?.ok_or_else(|| WebError::NotFound(format!("no eval run with id {id:?}")))?;
            Ok(EvalDetail { cases: db.eval_cases(&run.id)?, run })
        })
        .await?;
    Ok(web::Json(detail))
}

/// An outcome check as the episode left it.
pub struct EvalCheckView {
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

pub struct EvalCaseRowView {
    pub position: usize,
    pub case_id: String,
    pub category: String,
    pub first_tool: &'static str,
    /// The tool the episode called first (— without a call; old runs did not record it).
    pub first_call: String,
    pub success: &'static str,
    pub valid_calls: String,
    pub turns: String,
    pub stopped: &'static str,
    pub error: String,
}

#[derive(Template)]
#[template(path = "pages/eval.html")]
pub struct EvalPage {
    pub nav: Nav,
    pub id: String,
    pub target: String,
    pub suites: String,
    pub finished: bool,
    /// Per-category rates (percent): right first tool, task success, valid calls.
    pub charts: Vec<BarChart>,
    pub cases: Vec<EvalCaseRowView>,
}

#[derive(Template)]
#[template(path = "pages/eval_case.html")]
pub struct EvalCasePage {
    pub nav: Nav,
    pub id: String,
    pub case_id: String,
    pub prompt: String,
    pub reference: String,
    pub first_tools: String,
    pub checks: Vec<EvalCheckView>,
    pub called: String,
    pub scores: String,
    pub messages: Vec<MessageView>,
}

fn mark(value: &serde_json::Value) -> &'static str {
    match value.as_bool() {
        Some(true) => "✓",
        Some(false) => "✗",
        None => "–",
    }
}

fn names(value: &serde_json::Value) -> String {
    let list: Vec<&str> = value.as_array().into_iter().flatten().filter_map(|v| v.as_str()).collect();
    if list.is_empty() {
        "–".into()
    } else {
        list.join(" → ")
    }
}

async fn load_eval(state: &AppState, id: String) -> Result<(EvalRunRow, Vec<crate::store::EvalCaseRow>), WebError> {
    state
        .with_db(move |db| {
            let run = db.get_eval_run(&id)?.ok_or_else(|| WebError::NotFound(format!("no eval run with id {id:?}")))?;
            Ok((db.eval_cases(&run.id)?, run))
        })
        .await
        .map(|(cases, run)| (run, cases))
}

/// One eval run: every case with its headline scores, linked to its episode.
async fn eval_page(state: web::Data<AppState>, id: web::Path<String>) -> Result<HttpResponse, PageError> {
    let (run, cases) = load_eval(&state, id.into_inner()).await?;
    let categories = run.summary.as_ref().and_then(|s| s["categories"].as_object().cloned()).unwrap_or_default();
    let chart = |title: &str, metric: &str| {
        let rows: Vec<(String, f64)> = categories
            .iter()
            .map(|(name, summary)| (name.clone(), summary[metric]["rate"].as_f64().unwrap_or(0.0) * 100.0))
            .collect();
        BarChart::new(title, &rows)
    };
    let charts = if categories.is_empty() {
        Vec::new()
    } else {
        vec![
            chart("Right first tool, % per category", "first_tool"),
            chart("Task success, % per category", "success"),
            chart("Calls with valid arguments, % per category", "valid_calls"),
        ]
    };
    html(EvalPage {
        nav: Nav::new("/models"),
        charts,
        target: run.target.clone(),
        suites: run.suites.join(", "),
        finished: run.finished_at.is_some(),
        cases: cases
            .iter()
            .map(|c| EvalCaseRowView {
                position: c.position,
                case_id: c.case_id.clone(),
                category: c.category.clone(),
                first_tool: mark(&c.score["first_tool"]),
                first_call: c.score["first_call"].as_str().unwrap_or("—").to_string(),
                success: mark(&c.score["success"]),
                valid_calls: format!("{}/{}", c.score["valid_calls"], c.score["calls"]),
                turns: c.score["turns"].to_string(),
                stopped: mark(&c.score["stopped"]),
                error: c.score["error"].as_str().unwrap_or_default().to_string(),
            })
            .collect(),
        id: run.id,
    })
}

/// One case: the episode as a conversation beside what counts as success.
async fn eval_case_page(
    state: web::Data<AppState>,
    path: web::Path<(String, usize)>,
) -> Result<HttpResponse, PageError> {
    let (id, position) = path.into_inner();
    let (run, cases) = load_eval(&state, id).await?;
    let case = cases
        .into_iter()
        .find(|c| c.position == position)
        .ok_or_else(|| WebError::NotFound(format!("eval {} has no case {position}", run.id)))?;
    let wire: Vec<WireMessage> = serde_json::from_value(case.episode["transcript"].clone())
        .map_err(|e| WebError::Internal(format!("eval {} case {position}: transcript: {e}", run.id)))?;
    let messages =
        messages_from_wire(wire).map_err(|e| WebError::Internal(format!("eval {} case {position}: {e}", run.id)))?;
    let called: Vec<&str> =
        case.episode["calls"].as_array().into_iter().flatten().filter_map(|c| c["name"].as_str()).collect();
    let score = &case.score;
    html(EvalCasePage {
        nav: Nav::new("/models"),
        case_id: case.case_id.clone(),
        prompt: case.case["prompt"].as_str().unwrap_or_default().to_string(),
        reference: names(&case.case["reference"]),
        first_tools: names(&case.case["first_tools"]),
        checks: score["checks"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| EvalCheckView {
                name: c[0].as_str().unwrap_or_default().to_string(),
                passed: c[1].as_bool().unwrap_or(false),
                detail: c[2].as_str().unwrap_or_default().to_string(),
            })
            .collect(),
        called: if called.is_empty() { "none".into() } else { called.join(" → ") },
        scores: format!(
            "first tool {}, task success {}, valid calls {}/{}, {} turns, stopped {}",
            mark(&score["first_tool"]),
            mark(&score["success"]),
            score["valid_calls"],
            score["calls"],
            score["turns"],
            mark(&score["stopped"])
        ),
        messages: message_views(&messages),
        id: run.id,
    })
}
