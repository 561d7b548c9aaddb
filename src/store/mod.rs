//! The store: the only module that speaks SQL. One SQLite file (`understudy.db`) in the data
//! dir, WAL, foreign keys on every connection, numbered migrations from `migrations/` applied at
//! open. Typed queries per table live in the submodules (`traces`, `pairs`, `feedback`, `jobs`, `capture`,
//! `orchestrator`, ...); callers
//! never see `rusqlite`.

mod capture;
mod datasets;
mod evals;
mod exports;
mod feedback;
mod jobs;
mod models;
mod orchestrator;
mod pairs;
mod templates;
mod traces;

use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::Duration;

use rusqlite::Connection;
use rusqlite_migration::{Migrations, M};

pub use capture::{CaptureFileRow, CaptureSession};
pub use datasets::DatasetRow;
pub use evals::{EvalCaseRow, EvalRunRow, EvalSuiteRow, PromotionRow};
pub use exports::ExportRow;
pub use feedback::{FeedbackRow, FeedbackYield};
pub use models::{ModelRow, NewModel};
pub use orchestrator::CycleRow;
pub use pairs::{PairInsertOutcome, StoredPair};
pub use templates::StoredTemplate;
pub use traces::{InsertOutcome, NamedCount, TraceCounts, TraceFilter, TraceSummary, UpsertOutcome};

pub const DB_FILE: &str = "understudy.db";

static MIGRATIONS: LazyLock<Migrations<'static>> = LazyLock::new(|| {
    Migrations::new(vec![
        M::up(include_str!("../../migrations/0001_init.sql")),
        M::up(include_str!("../../migrations/0002_exports.sql")),
        M::up(include_str!("../../migrations/0003_capture.sql")),
        M::up(include_str!("../../migrations/0004_eval.sql")),
        M::up(include_str!("../../migrations/0005_orchestrator.sql")),
        M::up(include_str!("../../migrations/0006_feedback.sql")),
    ])
});

/// The migration list, exposed so the test suite can validate it.
pub fn migrations() -> &'static Migrations<'static> {
    &MIGRATIONS
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("cannot migrate the database: {0}")]
    Migration(#[from] rusqlite_migration::Error),
    #[error("cannot create the data directory {path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error("stored row {id} is unreadable: {reason}")]
    Corrupt { id: String, reason: String },
    #[error("{0}")]
    Conflict(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A handle on the database file; cheap to clone, opens connections on demand.
#[derive(Debug, Clone)]
pub struct Store {
    db_path: PathBuf,
}

impl Store {
    /// Create the data dir if needed, open the database and bring its schema up to date.
    pub fn open(data_dir: &Path) -> StoreResult<Store> {
        std::fs::create_dir_all(data_dir)
            .map_err(|source| StoreError::DataDir { path: data_dir.to_path_buf(), source })?;
        let store = Store { db_path: data_dir.join(DB_FILE) };
        let mut db = store.connect()?;
        db.conn.pragma_update(None, "journal_mode", "WAL")?;
        MIGRATIONS.to_latest(&mut db.conn)?;
        Ok(store)
    }

    pub fn db_path(&self) -> &Path {
        &self.db_path
    }

    /// A new connection with the per-connection pragmas set.
    pub fn connect(&self) -> StoreResult<Db> {
        let conn = Connection::open(&self.db_path)?;
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        Ok(Db { conn })
    }
}

/// One open connection with the typed queries.
pub struct Db {
    conn: Connection,
}

impl Db {
    pub fn schema_version(&self) -> StoreResult<i64> {
        Ok(self.conn.pragma_query_value(None, "user_version", |row| row.get(0))?)
    }

    pub fn journal_mode(&self) -> StoreResult<String> {
        Ok(self.conn.pragma_query_value(None, "journal_mode", |row| row.get(0))?)
    }

    pub fn foreign_keys_enabled(&self) -> StoreResult<bool> {
        Ok(self.conn.pragma_query_value(None, "foreign_keys", |row| row.get::<_, i64>(0))? == 1)
    }

    pub fn table_names(&self) -> StoreResult<Vec<String>> {
        let mut statement = self.conn.prepare(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
        )?;
        let names = statement.query_map([], |row| row.get(0))?.collect::<Result<_, _>>()?;
        Ok(names)
    }
}
