//! Typed queries on `workflow_templates`: the user's added or edited templates (JSON bodies).
//! Built-in templates live in the binary; a stored template with the same name replaces one.

use rusqlite::{params, OptionalExtension};

use super::{Db, StoreResult};
use crate::traces::now_rfc3339;

#[derive(Debug, Clone)]
pub struct StoredTemplate {
    pub name: String,
    pub body: String,
    pub updated_at: String,
}

impl Db {
    pub fn upsert_template(&self, name: &str, body: &str) -> StoreResult<()> {
        self.conn.execute(
            "INSERT INTO workflow_templates (name, body, builtin, updated_at) VALUES (?1, ?2, 0, ?3)
             ON CONFLICT (name) DO UPDATE SET body = excluded.body, updated_at = excluded.updated_at",
            params![name, body, now_rfc3339()],
        )?;
        Ok(())
    }

    pub fn stored_templates(&self) -> StoreResult<Vec<StoredTemplate>> {
        let mut statement = self.conn.prepare("SELECT name, body, updated_at FROM workflow_templates ORDER BY name")?;
        let rows = statement.query_map([], |row| {
            Ok(StoredTemplate { name: row.get(0)?, body: row.get(1)?, updated_at: row.get(2)? })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn stored_template(&self, name: &str) -> StoreResult<Option<StoredTemplate>> {
        Ok(self
            .conn
            .query_row("SELECT name, body, updated_at FROM workflow_templates WHERE name = ?", [name], |row| {
                Ok(StoredTemplate { name: row.get(0)?, body: row.get(1)?, updated_at: row.get(2)? })
            })
            .optional()?)
    }

    pub fn delete_template(&self, name: &str) -> StoreResult<bool> {
        Ok(self.conn.execute("DELETE FROM workflow_templates WHERE name = ?", [name])? > 0)
    }
}
