//! The Bootstrap page: the template list, the generate form (a bootstrap job), the template
//! editor with validation shown beside the field, and a preview of one generated trace.

use actix_web::{web, HttpResponse};
use askama::Template;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody, PageError};
use super::shared::*;
use super::traces::{message_views, trace_row, CheckView, MessageView, TraceRow};
use super::{AppState, WebError};
use crate::bootstrap::workflows::{fact_names, parse_file, WorkflowTemplate};
use crate::bootstrap::{active_templates, generator, TemplateOrigin};
use crate::jobs::bootstrap::BootstrapParams;
use crate::jobs::requests::{BootstrapRequest, MAX_BOOTSTRAP_TRACES};
use crate::jobs::JobRecord;
use crate::jobs::{JobId, JobParams};
use crate::store::TraceFilter;
use crate::traces::Source;

pub fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/bootstrap", web::get().to(page))
        .route("/bootstrap/generate", web::post().to(generate))
        .route("/bootstrap/preview", web::get().to(preview))
        .route("/bootstrap/templates/new", web::get().to(new_template))
        .route("/bootstrap/templates", web::post().to(create_template))
        .route("/bootstrap/templates/{name}", web::get().to(edit_template))
        .route("/bootstrap/templates/{name}", web::post().to(save_template));
}

/// Routes under `/api`.
pub fn api_routes(config: &mut web::ServiceConfig) {
    config
        .route("/bootstrap", web::post().to(start_bootstrap))
        .route("/templates", web::get().to(list_templates))
        .route("/templates/{name}", web::get().to(get_template))
        .route("/templates/{name}", web::put().to(put_template));
}

async fn render_page(state: &AppState, form: GenerateForm, selected: &str) -> Result<BootstrapPage, WebError> {
    let filter = TraceFilter { source: Some(Source::Synthetic), ..TraceFilter::default() };
    let (templates, total, recent) = state
        .with_db(move |db| {
            let templates = active_templates(db)?;
            Ok((templates, db.count_traces(&filter)?, db.list_traces(&filter, 5, 0)?))
        })
        .await?;
    let names: Vec<String> = templates.iter().map(|(t, _)| t.name.clone()).collect();
    let mut template_options = SelectOption::list(names.iter().map(String::as_str), selected, Some("all templates"));
    template_options.iter_mut().for_each(|o| o.selected = o.value == selected);
    Ok(BootstrapPage {
        nav: Nav::new("/bootstrap"),
        form,
        template_options,
        templates: templates
            .iter()
            .map(|(t, origin)| TemplateRow {
                name: t.name.clone(),
                category: t.category().to_string(),
                origin: match origin {
                    TemplateOrigin::Builtin => "built-in",
                    TemplateOrigin::Custom => "custom",
                },
                scenarios: t.scenarios.len(),
                prompts: t.prompts.len() + t.scenarios.iter().map(|s| s.prompts.len()).sum::<usize>(),
                description: t.description.clone(),
            })
            .collect(),
        rows: recent.into_iter().map(trace_row).collect(),
        total,
        page: 1,
        pages: 1,
        prev_link: None,
        next_link: None,
        filter_error: None,
    })
}

async fn page(state: web::Data<AppState>) -> Result<HttpResponse, PageError> {
    let form = GenerateForm { traces: "500".into(), ..GenerateForm::default() };
    html(render_page(&state, form, "").await?)
}

#[derive(Debug, Deserialize)]
pub struct GenerateInput {
    pub traces: String,
    #[serde(default)]
    pub seed: String,
    #[serde(default)]
    pub template: String,
}

/// The form's fields as a request, resolved by `BootstrapRequest`'s rules, or the form with
/// errors beside its fields.
fn validate(input: &GenerateInput) -> Result<BootstrapParams, GenerateForm> {
    let mut form = GenerateForm { traces: input.traces.clone(), seed: input.seed.clone(), ..GenerateForm::default() };
    let traces_rule = format!("Enter a whole number from 1 to {MAX_BOOTSTRAP_TRACES}.");
    let traces = input.traces.trim().parse::<u64>().map_err(|_| form.traces_error = Some(traces_rule.clone())).ok();
    let seed = match input.seed.trim() {
        "" => Some(None),
        text => text
            .parse::<u64>()
            .map(Some)
            .map_err(|_| form.seed_error = Some("The seed is a non-negative whole number (or leave it empty).".into()))
            .ok(),
    };
    let (Some(traces), Some(seed)) = (traces, seed) else { return Err(form) };
    let templates = Some(input.template.trim()).filter(|t| !t.is_empty()).map(|t| vec![t.to_string()]);
    BootstrapRequest { traces, seed, templates: templates.unwrap_or_default() }.resolve().map_err(|_| {
        form.traces_error = Some(traces_rule);
        form
    })
}

async fn generate(state: web::Data<AppState>, input: web::Form<GenerateInput>) -> Result<HttpResponse, PageError> {
    match validate(&input) {
        Ok(params) => {
            let id = enqueue(&state, params).await?;
            Ok(see_other(&format!("/jobs/{id}")))
        }
        Err(form) => {
            let body = render_page(&state, form, &input.template)
                .await?
                .render()
                .map_err(|e| WebError::Internal(e.to_string()))?;
            Ok(HttpResponse::UnprocessableEntity().content_type("text/html; charset=utf-8").body(body))
        }
    }
}

/// Queue a bootstrap job and wake the runner; shared with the API.
pub async fn enqueue(state: &AppState, params: BootstrapParams) -> Result<JobId, WebError> {
    state.submit(JobParams::Bootstrap(params)).await
}

fn editor(name: &str, is_new: bool, body: String, body_error: Option<String>) -> TemplateEditPage {
    TemplateEditPage {
        nav: Nav::new("/bootstrap"),
        name: name.to_string(),
        is_new,
        action: if is_new { "/bootstrap/templates".into() } else { format!("/bootstrap/templates/{name}") },
        body,
        body_error,
        facts: fact_names().join(", "),
    }
}

async fn find_template(state: &AppState, name: String) -> Result<WorkflowTemplate, WebError> {
    let templates = state.with_db(|db| Ok(active_templates(db)?)).await?;
    templates
        .into_iter()
        .map(|(t, _)| t)
        .find(|t| t.name == name)
        .ok_or_else(|| WebError::NotFound(format!("no template named {name:?}")))
}

async fn edit_template(state: web::Data<AppState>, name: web::Path<String>) -> Result<HttpResponse, PageError> {
    let template = find_template(&state, name.into_inner()).await?;
    let body = serde_json::to_string_pretty(&template).map_err(|e| WebError::Internal(e.to_string()))?;
    html(editor(&template.name, false, body, None))
}

async fn new_template(state: web::Data<AppState>) -> Result<HttpResponse, PageError> {
    let mut example = find_template(&state, "code_search".into()).await?;
    example.name = "my_workflow".into();
    example.description = "Describe what this workflow does.".into();
    let body = serde_json::to_string_pretty(&example).map_err(|e| WebError::Internal(e.to_string()))?;
    html(editor("my_workflow", true, body, None))
}

#[derive(Debug, Deserialize)]
pub struct TemplateInput {
    pub body: String,
}

/// Validate and store one template from editor text; the error names where the problem is.
pub async fn store_template(
    state: &AppState,
    body: &str,
    expected_name: Option<&str>,
) -> Result<WorkflowTemplate, WebError> {
    let mut templates = parse_file(body).map_err(WebError::BadRequest)?;
    if templates.len() != 1 {
        return Err(WebError::BadRequest(format!("expected one template object, got {}", templates.len())));
    }
    let template = templates.remove(0);
    if let Some(expected) = expected_name {
        if template.name != expected {
            return Err(WebError::BadRequest(format!(
                "name: this page edits {expected:?}; to create {:?}, use Add a template",
                template.name
            )));
        }
    }
    let json = serde_json::to_string(&template).map_err(|e| WebError::Internal(format!("template JSON: {e}")))?;
    let name = template.name.clone();
    state.with_db(move |db| Ok(db.upsert_template(&name, &json)?)).await?;
    Ok(template)
}

async fn save_template(
    state: web::Data<AppState>,
    name: web::Path<String>,
    input: web::Form<TemplateInput>,
) -> Result<HttpResponse, PageError> {
    let name = name.into_inner();
    match store_template(&state, &input.body, Some(&name)).await {
        Ok(_) => Ok(see_other("/bootstrap")),
        Err(WebError::BadRequest(error)) => invalid(editor(&name, false, input.body.clone(), Some(error))),
        Err(other) => Err(other.into()),
    }
}

async fn create_template(
    state: web::Data<AppState>,
    input: web::Form<TemplateInput>,
) -> Result<HttpResponse, PageError> {
    match store_template(&state, &input.body, None).await {
        Ok(_) => Ok(see_other("/bootstrap")),
        Err(WebError::BadRequest(error)) => invalid(editor("new", true, input.body.clone(), Some(error))),
        Err(other) => Err(other.into()),
    }
}

fn invalid(page: TemplateEditPage) -> Result<HttpResponse, PageError> {
    let body = page.render().map_err(|e| WebError::Internal(e.to_string()))?;
    Ok(HttpResponse::UnprocessableEntity().content_type("text/html; charset=utf-8").body(body))
}

#[derive(Debug, Deserialize)]
pub struct PreviewQuery {
    pub template: String,
    pub seed: Option<u64>,
}

async fn preview(state: web::Data<AppState>, query: web::Query<PreviewQuery>) -> Result<HttpResponse, PageError> {
    let template = find_template(&state, query.template.clone()).await?;
    let seed = query.seed.unwrap_or(1);
    let trace = web::block(move || generator::generate(std::slice::from_ref(&template), seed, 0))
        .await
        .map_err(|e| WebError::Internal(e.to_string()))?
        .map_err(|e| WebError::BadRequest(e.to_string()))?;
    html(PreviewPage {
        nav: Nav::new("/bootstrap"),
        template: query.template.clone(),
        seed,
        next_seed: seed + 1,
        prompt: trace.prompt.clone(),
        outcome: trace.outcome.status.as_str().to_string(),
        checks: trace.outcome.checks.iter().map(|c| CheckView { name: c.name.clone(), passed: c.passed }).collect(),
        messages: message_views(&trace.messages),
    })
}

pub struct TemplateRow {
    pub name: String,
    pub category: String,
    pub origin: &'static str,
    pub scenarios: usize,
    pub prompts: usize,
    pub description: String,
}

/// Values and errors of the generate form.
#[derive(Default)]
pub struct GenerateForm {
    pub traces: String,
    pub seed: String,
    pub traces_error: Option<String>,
    pub seed_error: Option<String>,
}

#[derive(Template)]
#[template(path = "pages/bootstrap.html")]
pub struct BootstrapPage {
    pub nav: Nav,
    pub form: GenerateForm,
    pub template_options: Vec<SelectOption>,
    pub templates: Vec<TemplateRow>,
    pub rows: Vec<TraceRow>,
    pub total: i64,
    pub page: i64,
    pub pages: i64,
    pub prev_link: Option<String>,
    pub next_link: Option<String>,
    pub filter_error: Option<String>,
}

#[derive(Template)]
#[template(path = "pages/template_edit.html")]
pub struct TemplateEditPage {
    pub nav: Nav,
    pub name: String,
    pub is_new: bool,
    pub action: String,
    pub body: String,
    pub body_error: Option<String>,
    pub facts: String,
}

#[derive(Template)]
#[template(path = "pages/preview.html")]
pub struct PreviewPage {
    pub nav: Nav,
    pub template: String,
    pub seed: u64,
    pub next_seed: u64,
    pub prompt: String,
    pub outcome: String,
    pub checks: Vec<CheckView>,
    pub messages: Vec<MessageView>,
}

/// Queue a bootstrap job that generates executable synthetic traces.
#[utoipa::path(post, path = "/api/bootstrap", request_body = BootstrapRequest,
    responses((status = 202, body = JobRecord), (status = 400, body = ErrorBody)))]
pub async fn start_bootstrap(
    state: web::Data<AppState>,
    request: web::Json<BootstrapRequest>,
) -> Result<HttpResponse, ApiError> {
    let id = enqueue(&state, request.into_inner().resolve()?).await?;
    accepted(&state, id).await
}

#[derive(Serialize, ToSchema)]
pub struct TemplateSummary {
    pub name: String,
    pub category: String,
    /// builtin or custom
    pub origin: String,
    pub scenarios: usize,
    pub description: String,
}

/// The active workflow templates.
#[utoipa::path(get, path = "/api/templates", responses((status = 200, body = Vec<TemplateSummary>)))]
pub async fn list_templates(state: web::Data<AppState>) -> Result<web::Json<Vec<TemplateSummary>>, ApiError> {
    let templates = state.with_db(|db| Ok(crate::bootstrap::active_templates(db)?)).await?;
    Ok(web::Json(
        templates
            .into_iter()
            .map(|(t, origin)| TemplateSummary {
                category: t.category().to_string(),
                origin: format!("{origin:?}").to_lowercase(),
                scenarios: t.scenarios.len(),
                description: t.description,
                name: t.name,
            })
            .collect(),
    ))
}

/// One template as JSON.
#[utoipa::path(get, path = "/api/templates/{name}", params(("name" = String, Path)),
    responses((status = 200, description = "The template", body = Object), (status = 404, body = ErrorBody)))]
pub async fn get_template(state: web::Data<AppState>, name: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let name = name.into_inner();
    let templates = state.with_db(|db| Ok(crate::bootstrap::active_templates(db)?)).await?;
    let template = templates
        .into_iter()
        .find(|(t, _)| t.name == name)
        .ok_or_else(|| WebError::NotFound(format!("no template named {name:?}")))?;
    Ok(HttpResponse::Ok().json(template.0))
}

/// Add or replace a template; it is validated first (unknown slots, tools, extractors).
#[utoipa::path(put, path = "/api/templates/{name}", params(("name" = String, Path)),
    request_body(content = Object, description = "A workflow template"),
    responses((status = 200, description = "The stored template", body = Object), (status = 400, body = ErrorBody)))]
pub async fn put_template(
    state: web::Data<AppState>,
    name: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let text = std::str::from_utf8(&body).map_err(|_| WebError::BadRequest("the body is not UTF-8".into()))?;
    let template = store_template(&state, text, Some(&name)).await?;
    Ok(HttpResponse::Ok().json(template))
}
