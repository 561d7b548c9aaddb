-- Playground feedback on one served reply: a thumbs up, a thumbs down, or an edit saved as the
-- preferred answer. The body is the redacted conversation before the reply, the tools, the
-- reply and the edit (`{"messages","tools","reply","edited"}`). A thumbs up links the trace it
-- stored, an edit the preference pair; a thumbs down links neither (DPO trains only on pairs,
-- SFT must not learn a rejected reply), so this row is where it is kept.
CREATE TABLE feedback (
    id          TEXT PRIMARY KEY,
    rating      TEXT NOT NULL CHECK (rating IN ('up', 'down', 'preferred')),
    model       TEXT NOT NULL,
    version     TEXT NOT NULL,
    body        TEXT NOT NULL,
    trace_id    TEXT REFERENCES traces (id) ON DELETE SET NULL,
    pair_id     TEXT REFERENCES preference_pairs (id) ON DELETE SET NULL,
    created_at  TEXT NOT NULL
);

CREATE INDEX feedback_created ON feedback (created_at, id);
