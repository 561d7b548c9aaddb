-- Capture engine (spec 3.3): per-file progress over Claude Code transcripts, so a scan skips
-- unchanged files, recognises an append (same head, same last complete line) and re-reads a
-- rewritten or truncated file. Only hashes and offsets are kept, never transcript text.
CREATE TABLE capture_files (
    path             TEXT PRIMARY KEY,      -- absolute path of the transcript
    session_id       TEXT,
    agent_id         TEXT,                  -- set for subagent (sidechain) transcripts
    size             INTEGER NOT NULL,      -- bytes read at the last scan
    mtime_ns         INTEGER NOT NULL,
    head_len         INTEGER NOT NULL,      -- bytes covered by head_hash (at most 1024)
    head_hash        TEXT NOT NULL,
    complete_offset  INTEGER NOT NULL,      -- just past the last complete line
    last_line_start  INTEGER NOT NULL,
    last_line_hash   TEXT,                  -- SHA-256 of the last complete line
    last_uuid        TEXT,                  -- uuid of the last complete record
    n_traces         INTEGER NOT NULL,      -- traces built from the file at the last scan
    malformed_lines  INTEGER NOT NULL,
    scanned_at       TEXT NOT NULL
);

CREATE INDEX capture_files_session ON capture_files (session_id);
