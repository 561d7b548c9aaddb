//! Typed queries on `datasets`: a built dataset's config, statistics and directory.

use rusqlite::{params, OptionalExtension, Row};

use super::{Db, StoreResult};
use crate::traces::now_rfc3339;

#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct DatasetRow {
    pub id: String,
    pub name: String,
    #[schema(value_type = Object)]
    pub config: serde_json::Value,
    #[schema(value_type = Object)]
    pub stats: serde_json::Value,
    pub path: String,
    pub created_at: String,
}

fn dataset_row(row: &Row<'_>) -> rusqlite::Result<DatasetRow> {
    let json = |index: usize| -> rusqlite::Result<serde_json::Value> {
        Ok(serde_json::from_str(&row.get::<_, String>(index)?).unwrap_or_default())
    };
    Ok(DatasetRow {
        id: row.get(0)?,
        name: row.get(1)?,
        config: json(2)?,
        stats: json(3)?,
        path: row.get(4)?,
        created_at: row.get(5)?,
    })
}

impl Db {
    /// Record a built dataset. A build job killed after recording it but before it was marked
    /// finished builds the same directory again when resumed and records it again: the row is
    /// updated in place (it keeps its creation time).
    pub fn insert_dataset(
        &self,
        id: &str,
        name: &str,
        config: &serde_json::Value,
        stats: &serde_json::Value,
        path: &str,
    ) -> StoreResult<()> {
        self.conn.execute(
            "INSERT INTO datasets (id, name, config, stats, path, created_at) VALUES (?, ?, ?, ?, ?, ?)
             ON CONFLICT (id) DO UPDATE SET name = excluded.name, config = excluded.config,
                 stats = excluded.stats, path = excluded.path",
            params![id, name, config.to_string(), stats.to_string(), path, now_rfc3339()],
        )?;
        Ok(())
    }

    /// Newest first.
    pub fn list_datasets(&self) -> StoreResult<Vec<DatasetRow>> {
        let mut statement = self.conn.prepare(
            "SELECT id, name, config, stats, path, created_at FROM datasets ORDER BY created_at DESC, id DESC",
        )?;
        let rows = statement.query_map([], dataset_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn get_dataset(&self, id: &str) -> StoreResult<Option<DatasetRow>> {
        Ok(self
            .conn
            .query_row("SELECT id, name, config, stats, path, created_at FROM datasets WHERE id = ?", [id], dataset_row)
            .optional()?)
    }
}
