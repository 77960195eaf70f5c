-- Bundle import jobs outlive the server run that started them: a row is written when a job
-- starts (state 'running') and updated when it ends; the newest 100 are kept. Rows still
-- 'running' when a server starts belong to a run that stopped mid-import and are marked
-- 'error' then. result is the ImportResult as JSON.
CREATE TABLE import_jobs (
    id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    origin TEXT NOT NULL,
    state TEXT NOT NULL,
    bytes_done INTEGER NOT NULL DEFAULT 0,
    bytes_total INTEGER NOT NULL DEFAULT 0,
    started_at REAL NOT NULL,
    finished_at REAL,
    result TEXT,
    error TEXT NOT NULL DEFAULT '',
    error_code TEXT NOT NULL DEFAULT ''
)
