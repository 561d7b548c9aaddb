//! The Bootstrap page: the template list, the generate form (a bootstrap job), the template
//! editor with validation shown beside the field, and a preview of one generated trace.

use actix_web::{web, HttpResponse};
use askama::Template;
use serde::Deserialize;

use super::error::PageError;
use super::pages::{html, message_views, see_other, trace_row};
use super::views::*;
use super::{AppState, WebError};
use crate::bootstrap::templates::{fact_names, parse_file, WorkflowTemplate};
use crate::bootstrap::{active_templates, generator, TemplateOrigin};
use crate::jobs::bootstrap::{params_value, BootstrapParams};
use crate::jobs::JobKind;
use crate::store::TraceFilter;
use crate::traces::Source;

pub const MAX_BOOTSTRAP_TRACES: u64 = 100_000;

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

/// The form's fields converted into job parameters, or the form with errors beside its fields.
fn validate(input: &GenerateInput) -> Result<BootstrapParams, GenerateForm> {
    let mut form = GenerateForm { traces: input.traces.clone(), seed: input.seed.clone(), ..GenerateForm::default() };
    let traces = match input.traces.trim().parse::<u64>() {
        Ok(n) if (1..=MAX_BOOTSTRAP_TRACES).contains(&n) => Some(n),
        _ => {
            form.traces_error = Some(format!("Enter a whole number from 1 to {MAX_BOOTSTRAP_TRACES}."));
            None
        }
    };
    let seed = match input.seed.trim() {
        "" => Some(u64::from(rand::random::<u32>())),
        text => match text.parse::<u64>() {
            Ok(seed) => Some(seed),
            Err(_) => {
                form.seed_error = Some("The seed is a non-negative whole number (or leave it empty).".into());
                None
            }
        },
    };
    match (traces, seed) {
        (Some(traces), Some(seed)) => Ok(BootstrapParams {
            traces,
            seed,
            templates: Some(input.template.trim())
                .filter(|t| !t.is_empty())
                .map(|t| vec![t.to_string()])
                .unwrap_or_default(),
        }),
        _ => Err(form),
    }
}

async fn generate(state: web::Data<AppState>, input: web::Form<GenerateInput>) -> Result<HttpResponse, PageError> {
    match validate(&input) {
        Ok(params) => {
            let job = enqueue(&state, params).await?;
            Ok(see_other(&format!("/jobs/{}", job.id)))
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
pub async fn enqueue(state: &AppState, params: BootstrapParams) -> Result<crate::jobs::JobRecord, WebError> {
    let value = params_value(&params);
    let job = state.with_db(move |db| Ok(db.insert_job(JobKind::Bootstrap.as_str(), &value, None)?)).await?;
    state.runner.notify();
    Ok(job)
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
) -> Result<WorkflowTemplate, String> {
    let mut templates = parse_file(body)?;
    if templates.len() != 1 {
        return Err(format!("expected one template object, got {}", templates.len()));
    }
    let template = templates.remove(0);
    if let Some(expected) = expected_name {
        if template.name != expected {
            return Err(format!(
                "name: this page edits {expected:?}; to create {:?}, use Add a template",
                template.name
            ));
        }
    }
    let json = serde_json::to_string(&template).map_err(|e| e.to_string())?;
    let name = template.name.clone();
    state.with_db(move |db| Ok(db.upsert_template(&name, &json)?)).await.map_err(|e| e.to_string())?;
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
        Err(error) => invalid(editor(&name, false, input.body.clone(), Some(error))),
    }
}

async fn create_template(
    state: web::Data<AppState>,
    input: web::Form<TemplateInput>,
) -> Result<HttpResponse, PageError> {
    match store_template(&state, &input.body, None).await {
        Ok(_) => Ok(see_other("/bootstrap")),
        Err(error) => invalid(editor("new", true, input.body.clone(), Some(error))),
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
        messages: message_views(&trace),
    })
}
