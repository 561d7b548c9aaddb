//! Typed queries on `models`: trained artifacts with lineage (base model, parent, dataset, run).

use rusqlite::{params, OptionalExtension, Row};

use super::{Db, StoreResult};
use crate::traces::now_rfc3339;

#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct ModelRow {
    pub id: String,
    pub name: String,
    pub base_model: String,
    pub parent_id: Option<String>,
    pub dataset_id: Option<String>,
    pub run_id: Option<String>,
    pub path: String,
    pub is_champion: bool,
    #[schema(value_type = Object)]
    pub metrics: serde_json::Value,
    pub created_at: String,
}

/// What a finished run registers.
pub struct NewModel<'a> {
    pub name: &'a str,
    pub base_model: &'a str,
    pub parent_id: Option<&'a str>,
    pub dataset_id: Option<&'a str>,
    pub run_id: Option<&'a str>,
    pub path: &'a str,
    pub metrics: &'a serde_json::Value,
}

fn model_row(row: &Row<'_>) -> rusqlite::Result<ModelRow> {
    Ok(ModelRow {
        id: row.get(0)?,
        name: row.get(1)?,
        base_model: row.get(2)?,
        parent_id: row.get(3)?,
        dataset_id: row.get(4)?,
        run_id: row.get(5)?,
        path: row.get(6)?,
        is_champion: row.get::<_, i64>(7)? != 0,
        metrics: serde_json::from_str(&row.get::<_, String>(8)?).unwrap_or_default(),
        created_at: row.get(9)?,
    })
}

const COLUMNS: &str = "id, name, base_model, parent_id, dataset_id, run_id, path, is_champion, metrics, created_at";

impl Db {
    /// Register a model; returns its id. The run's dataset must exist (foreign key).
    pub fn insert_model(&self, model: &NewModel<'_>) -> StoreResult<String> {
        let id = format!("mdl_{}", ulid::Ulid::new());
        self.conn.execute(
            "INSERT INTO models (id, name, base_model, parent_id, dataset_id, run_id, path, metrics, created_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            params![
                id,
                model.name,
                model.base_model,
                model.parent_id,
                model.dataset_id,
                model.run_id,
                model.path,
                model.metrics.to_string(),
                now_rfc3339()
            ],
        )?;
        Ok(id)
    }

    /// Newest first.
    pub fn list_models(&self) -> StoreResult<Vec<ModelRow>> {
        let mut statement =
            self.conn.prepare(&format!("SELECT {COLUMNS} FROM models ORDER BY created_at DESC, id DESC"))?;
        let rows = statement.query_map([], model_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn get_model(&self, id: &str) -> StoreResult<Option<ModelRow>> {
        Ok(self.conn.query_row(&format!("SELECT {COLUMNS} FROM models WHERE id = ?"), [id], model_row).optional()?)
    }

    /// The model a run registered, if any.
    pub fn model_of_run(&self, run_id: &str) -> StoreResult<Option<ModelRow>> {
        Ok(self
            .conn
            .query_row(&format!("SELECT {COLUMNS} FROM models WHERE run_id = ?"), [run_id], model_row)
            .optional()?)
    }
}
