-- Evaluation (spec 3.8): imported suites, eval runs with their summary, and every case's score
-- and episode transcript, so runs of different models can be compared case by case.
CREATE TABLE eval_suites (
    name        TEXT PRIMARY KEY,
    cases       TEXT NOT NULL,          -- the suite as JSONL, one validated case per line
    n_cases     INTEGER NOT NULL,
    created_at  TEXT NOT NULL
);

CREATE TABLE eval_runs (
    id          TEXT PRIMARY KEY,       -- ev_<job ulid>: a resumed job keeps its run
    job_id      TEXT NOT NULL,
    target      TEXT NOT NULL,          -- what was evaluated, as shown to users
    model_id    TEXT REFERENCES models(id),
    suites      TEXT NOT NULL,          -- JSON array of suite names
    summary     TEXT,                   -- JSON: overall and per-category metrics, when finished
    created_at  TEXT NOT NULL,
    finished_at TEXT
);

CREATE TABLE eval_cases (
    run_id      TEXT NOT NULL REFERENCES eval_runs(id) ON DELETE CASCADE,
    position    INTEGER NOT NULL,       -- order within the run (resume continues after the last)
    case_id     TEXT NOT NULL,
    suite       TEXT NOT NULL,
    category    TEXT NOT NULL,
    score       TEXT NOT NULL,          -- JSON CaseScore
    episode     TEXT NOT NULL,          -- JSON Episode (transcript, calls, ...)
    eval_case   TEXT NOT NULL,          -- JSON EvalCase: what the episode was measured against
    PRIMARY KEY (run_id, position)
);
CREATE INDEX eval_runs_model ON eval_runs(model_id);

-- Champion decisions: each promotion or refusal with the rule and the numbers it compared, and
-- manual promotions (`models promote`).
CREATE TABLE promotions (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    model_id        TEXT NOT NULL REFERENCES models(id),
    previous        TEXT,                   -- the champion before the decision
    promoted        INTEGER NOT NULL,       -- 1: the model became the champion
    reason          TEXT NOT NULL,
    decision        TEXT NOT NULL,          -- JSON: rule, eval runs and numbers compared
    created_at      TEXT NOT NULL
);
