//! Typed queries on `exports` (one row per export directory, its manifest as JSON) and
//! `deployments` (what was registered with Ollama).

use rusqlite::{params, OptionalExtension, Row};

use super::{Db, StoreResult};
use crate::traces::now_rfc3339;

#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct ExportRow {
    pub id: String,
    pub model_id: Option<String>,
    pub name: String,
    /// The export directory.
    pub path: String,
    /// `export.json` as stored.
    #[schema(value_type = Object)]
    pub manifest: serde_json::Value,
    pub parity_passed: bool,
    pub created_at: String,
}

fn export_row(row: &Row<'_>) -> rusqlite::Result<ExportRow> {
    Ok(ExportRow {
        id: row.get(0)?,
        model_id: row.get(1)?,
        name: row.get(2)?,
        path: row.get(3)?,
        manifest: serde_json::from_str(&row.get::<_, String>(4)?).unwrap_or_default(),
        parity_passed: row.get::<_, i64>(5)? != 0,
        created_at: row.get(6)?,
    })
}

const COLUMNS: &str = "id, model_id, name, path, manifest, parity_passed, created_at";

impl Db {
    /// Record an export. An export job killed after recording it but before it was marked
    /// finished writes the same directory again when resumed and records it again: the row is
    /// updated in place (no delete, so its deployments stay).
    pub fn insert_export(
        &self,
        id: &str,
        model_id: Option<&str>,
        name: &str,
        path: &str,
        manifest: &serde_json::Value,
        parity_passed: bool,
    ) -> StoreResult<()> {
        self.conn.execute(
            "INSERT INTO exports (id, model_id, name, path, manifest, parity_passed, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (id) DO UPDATE SET model_id = excluded.model_id, name = excluded.name,
                 path = excluded.path, manifest = excluded.manifest, parity_passed = excluded.parity_passed",
            params![id, model_id, name, path, manifest.to_string(), parity_passed as i64, now_rfc3339()],
        )?;
        Ok(())
    }

    /// Newest first.
    pub fn list_exports(&self) -> StoreResult<Vec<ExportRow>> {
        let mut statement =
            self.conn.prepare(&format!("SELECT {COLUMNS} FROM exports ORDER BY created_at DESC, id DESC"))?;
        let rows = statement.query_map([], export_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn get_export(&self, id: &str) -> StoreResult<Option<ExportRow>> {
        Ok(self.conn.query_row(&format!("SELECT {COLUMNS} FROM exports WHERE id = ?"), [id], export_row).optional()?)
    }

    /// The newest export whose parity passed.
    pub fn latest_export(&self) -> StoreResult<Option<ExportRow>> {
        Ok(self
            .conn
            .query_row(
                &format!(
                    "SELECT {COLUMNS} FROM exports WHERE parity_passed = 1 ORDER BY created_at DESC, id DESC LIMIT 1"
                ),
                [],
                export_row,
            )
            .optional()?)
    }

    /// Record a deployment under `id` (derived from its job). A deploy job killed after recording
    /// it but before it was marked finished deploys again when resumed and records it again: the
    /// row is updated in place, so one job never leaves two deployments.
    pub fn insert_deployment(
        &self,
        id: &str,
        export_id: &str,
        host: &str,
        names: &[String],
        result: &serde_json::Value,
    ) -> StoreResult<()> {
        self.conn.execute(
            "INSERT INTO deployments (id, export_id, host, names, result, created_at) VALUES (?, ?, ?, ?, ?, ?)
             ON CONFLICT (id) DO UPDATE SET export_id = excluded.export_id, host = excluded.host,
                 names = excluded.names, result = excluded.result",
            params![
                id,
                export_id,
                host,
                serde_json::to_string(names).unwrap_or_default(),
                result.to_string(),
                now_rfc3339()
            ],
        )?;
        Ok(())
    }
}
