//! Bootstrap: executable synthetic traces. `templates` defines workflow templates as data and
//! validates them; `generator` turns a template into a true trace by running its tools in a
//! sandbox workspace. The `bootstrap` job (jobs::bootstrap) drives both and stores the traces.

pub mod generator;
pub mod workflows;

use std::collections::BTreeMap;

use crate::store::{Db, StoreError};
use workflows::WorkflowTemplate;

/// Where an active template comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TemplateOrigin {
    Builtin,
    Custom,
}

/// The templates bootstrap uses: the built-in set, with stored (user) templates replacing
/// built-ins of the same name and adding new ones. Sorted by name.
pub fn active_templates(db: &Db) -> Result<Vec<(WorkflowTemplate, TemplateOrigin)>, StoreError> {
    let mut by_name: BTreeMap<String, (WorkflowTemplate, TemplateOrigin)> =
        workflows::builtin().into_iter().map(|t| (t.name.clone(), (t, TemplateOrigin::Builtin))).collect();
    for stored in db.stored_templates()? {
        match serde_json::from_str::<WorkflowTemplate>(&stored.body) {
            Ok(template) => {
                by_name.insert(template.name.clone(), (template, TemplateOrigin::Custom));
            }
            Err(e) => tracing::warn!("stored template {} is unreadable and skipped: {e}", stored.name),
        }
    }
    Ok(by_name.into_values().collect())
}
