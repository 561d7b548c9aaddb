-- The orchestrator (spec 3.12): its cycles (its configuration is a `settings` row, key
-- `orchestrator`). A cycle is a durable
-- state machine whose stages are ordinary jobs; `orchestrator_cycle_jobs` links each stage to
-- its job in the same transaction that creates the job, so a restarted orchestrator resumes the
-- stage's job instead of starting a second one.
CREATE TABLE orchestrator_cycles (
    id          TEXT PRIMARY KEY,       -- cy_<ulid>
    number      INTEGER NOT NULL UNIQUE,
    status      TEXT NOT NULL,          -- running | succeeded | failed
    stage       TEXT NOT NULL,          -- the stage it is in (or ended in)
    state       TEXT NOT NULL,          -- JSON: traces counted, config used, what each stage made
    error       TEXT,
    started_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    finished_at TEXT
);
-- Never two cycles running at once.
CREATE UNIQUE INDEX orchestrator_one_running ON orchestrator_cycles(status) WHERE status = 'running';

CREATE TABLE orchestrator_cycle_jobs (
    cycle_id    TEXT NOT NULL REFERENCES orchestrator_cycles(id),
    stage       TEXT NOT NULL,
    job_id      TEXT NOT NULL REFERENCES jobs(id),
    PRIMARY KEY (cycle_id, stage)
);
