//! The Playground page: chat with any served model through our own OpenAI-compatible endpoint.
//! The server renders only the form — the served models (the same catalog `/v1/models` lists),
//! the system prompt the models were trained with and the default tools as JSON; the
//! conversation itself runs in `static/playground.js`, which streams `POST /v1/chat/completions`
//! like any other client. Nothing here decodes or talks to the engine.

use actix_web::{web, HttpResponse};
use askama::Template;
use serde_json::Value;

use super::error::PageError;
use super::shared::*;
use super::{AppState, WebError};
use crate::serve::registry::{self, CatalogEntry};

pub fn routes(config: &mut web::ServiceConfig) {
    config.route("/playground", web::get().to(page));
}

async fn page(state: web::Data<AppState>) -> Result<HttpResponse, PageError> {
    let (exports, models) = state.with_db(|db| Ok((db.list_exports()?, db.list_models()?))).await?;
    let catalog = registry::catalog(&exports, &models);
    let tools = Value::Array(crate::traces::tools::default_tools());
    html(PlaygroundPage {
        nav: Nav::new("/playground"),
        models: catalog.iter().enumerate().map(|(index, entry)| model_option(entry, index == 0)).collect(),
        system_prompt: crate::bootstrap::generator::system_prompt("."),
        tools_json: script_json(&tools)?,
    })
}

fn model_option(entry: &CatalogEntry, selected: bool) -> SelectOption {
    let champion = if entry.champion { " · champion" } else { "" };
    SelectOption { value: entry.name.clone(), label: format!("{}{champion} ({})", entry.name, entry.version), selected }
}

/// Pretty JSON that is safe as the raw text of a `<script>` element: `<`, `>` and `&` can only
/// occur inside JSON strings, where their `\u` escapes mean the same, so no `</script>` closes
/// the element early.
fn script_json(value: &Value) -> Result<String, WebError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| WebError::Internal(format!("tools JSON: {e}")))?;
    Ok(text.replace('<', "\\u003c").replace('>', "\\u003e").replace('&', "\\u0026"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_json_cannot_close_its_element_and_parses_back() {
        let value = serde_json::json!({"description": "</script><b>a & b</b>"});
        let text = script_json(&value).unwrap();
        assert!(!text.contains('<') && !text.contains('>') && !text.contains('&'));
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), value);
    }
}

#[derive(Template)]
#[template(path = "pages/playground.html")]
pub struct PlaygroundPage {
    pub nav: Nav,
    /// The served models, the champion first; empty when nothing is served yet.
    pub models: Vec<SelectOption>,
    /// The system prompt the models were trained with.
    pub system_prompt: String,
    /// The default tools as JSON, already safe inside a `<script>` element.
    pub tools_json: String,
}
