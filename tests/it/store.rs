//! Migrations: the list is valid, every file under migrations/ is registered, and a fresh
//! database gets WAL, foreign keys and every table the product needs.

use understudy::store::{migrations, Store};

#[test]
fn migrations_validate() {
    migrations().validate().expect("migrations apply cleanly to an empty database");
}

#[test]
fn fresh_database_has_the_schema_wal_and_foreign_keys() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("nested/data")).expect("open creates the data dir");
    assert!(store.db_path().ends_with("understudy.db"));
    let db = store.connect().unwrap();

    let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "sql"))
        .count() as i64;
    assert_eq!(db.schema_version().unwrap(), files, "every migrations/*.sql file is applied");
    assert_eq!(db.journal_mode().unwrap().to_lowercase(), "wal");
    assert!(db.foreign_keys_enabled().unwrap());
    let tables = db.table_names().unwrap();
    for table in [
        "traces",
        "preference_pairs",
        "workflow_templates",
        "datasets",
        "jobs",
        "job_metrics",
        "job_logs",
        "models",
        "exports",
        "settings",
    ] {
        assert!(tables.iter().any(|t| t == table), "missing table {table}; have {tables:?}");
    }
    drop(db);
    // Opening again is a no-op, not a second migration.
    let again = Store::open(&dir.path().join("nested/data")).unwrap();
    assert_eq!(again.connect().unwrap().schema_version().unwrap(), files);
}
