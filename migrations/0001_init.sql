-- Understudy schema, version 1. Append-only: later changes go in new numbered files.

CREATE TABLE traces (
    id              TEXT PRIMARY KEY,
    content_hash    TEXT NOT NULL UNIQUE,
    source          TEXT NOT NULL CHECK (source IN ('synthetic', 'claude_code', 'dpo_import', 'served', 'import')),
    category        TEXT NOT NULL,
    prompt          TEXT NOT NULL,
    split           TEXT NOT NULL CHECK (split IN ('train', 'val', 'test')),
    outcome_status  TEXT NOT NULL CHECK (outcome_status IN ('success', 'failure', 'partial', 'unknown')),
    n_messages      INTEGER NOT NULL,
    n_tool_calls    INTEGER NOT NULL,
    tool_names      TEXT NOT NULL,          -- space-separated, for filters and stats
    body            TEXT NOT NULL,          -- the canonical JSON object (spec 2.1)
    created_at      TEXT NOT NULL,
    stored_at       TEXT NOT NULL
);
CREATE INDEX traces_source ON traces (source);
CREATE INDEX traces_category ON traces (category);
CREATE INDEX traces_split ON traces (split);
CREATE INDEX traces_created ON traces (created_at, id);

CREATE TABLE preference_pairs (
    id              TEXT PRIMARY KEY,
    content_hash    TEXT NOT NULL UNIQUE,
    source          TEXT NOT NULL,
    prompt_text     TEXT NOT NULL,
    body            TEXT NOT NULL,          -- {"prompt","chosen","rejected","tools"?,"metadata"}
    trace_id        TEXT REFERENCES traces (id) ON DELETE SET NULL,
    created_at      TEXT NOT NULL
);

CREATE TABLE workflow_templates (
    name            TEXT PRIMARY KEY,
    body            TEXT NOT NULL,
    builtin         INTEGER NOT NULL DEFAULT 0,
    updated_at      TEXT NOT NULL
);

CREATE TABLE datasets (
    id              TEXT PRIMARY KEY,
    name            TEXT NOT NULL,
    config          TEXT NOT NULL,
    stats           TEXT NOT NULL,
    path            TEXT NOT NULL,
    created_at      TEXT NOT NULL
);

CREATE TABLE jobs (
    id               TEXT PRIMARY KEY,
    kind             TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'interrupted')),
    params           TEXT NOT NULL,         -- JSON, the job's input
    checkpoint       TEXT,                  -- JSON, the job's resumable state
    result           TEXT,                  -- JSON, the job's output
    error            TEXT,
    progress_done    INTEGER NOT NULL DEFAULT 0,
    progress_total   INTEGER,
    message          TEXT NOT NULL DEFAULT '',
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    owner_pid        INTEGER,
    created_at       TEXT NOT NULL,
    started_at       TEXT,
    finished_at      TEXT,
    updated_at       TEXT NOT NULL
);
CREATE INDEX jobs_status ON jobs (status, created_at);

CREATE TABLE job_metrics (
    job_id          TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    step            INTEGER NOT NULL,
    name            TEXT NOT NULL,
    value           REAL NOT NULL,
    recorded_at     TEXT NOT NULL
);
CREATE INDEX job_metrics_job ON job_metrics (job_id, name, step);

CREATE TABLE job_logs (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id          TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    level           TEXT NOT NULL,
    message         TEXT NOT NULL,
    logged_at       TEXT NOT NULL
);
CREATE INDEX job_logs_job ON job_logs (job_id, id);

CREATE TABLE models (
    id              TEXT PRIMARY KEY,
    name            TEXT NOT NULL,
    base_model      TEXT NOT NULL,
    parent_id       TEXT REFERENCES models (id),
    dataset_id      TEXT REFERENCES datasets (id),
    run_id          TEXT REFERENCES jobs (id),
    path            TEXT NOT NULL,
    is_champion     INTEGER NOT NULL DEFAULT 0,
    metrics         TEXT NOT NULL DEFAULT '{}',
    created_at      TEXT NOT NULL
);

CREATE TABLE exports (
    id              TEXT PRIMARY KEY,
    model_id        TEXT NOT NULL REFERENCES models (id) ON DELETE CASCADE,
    format          TEXT NOT NULL,
    quant           TEXT,
    path            TEXT NOT NULL,
    sha256          TEXT NOT NULL,
    bytes           INTEGER NOT NULL,
    parity          TEXT,
    created_at      TEXT NOT NULL
);

CREATE TABLE settings (
    key             TEXT PRIMARY KEY,
    value           TEXT NOT NULL,
    updated_at      TEXT NOT NULL
);
