-- One row per export (a directory under artifacts/exports holding an HF directory, GGUF files,
-- a Modelfile and export.json). The 0001 per-file table was never written to.
DROP TABLE exports;

CREATE TABLE exports (
    id              TEXT PRIMARY KEY,
    model_id        TEXT REFERENCES models (id) ON DELETE SET NULL,
    name            TEXT NOT NULL,
    path            TEXT NOT NULL,
    manifest        TEXT NOT NULL,
    parity_passed   INTEGER NOT NULL,
    created_at      TEXT NOT NULL
);

CREATE INDEX exports_model ON exports (model_id, created_at);

-- Deployments to Ollama: what was registered, under which names, and the outcome.
CREATE TABLE deployments (
    id              TEXT PRIMARY KEY,
    export_id       TEXT NOT NULL REFERENCES exports (id) ON DELETE CASCADE,
    host            TEXT NOT NULL,
    names           TEXT NOT NULL,
    result          TEXT NOT NULL,
    created_at      TEXT NOT NULL
);
