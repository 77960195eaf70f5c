-- Simulator runs: every answered /api/sim/predict and /api/sim/recommend, kept for comparison.
CREATE TABLE sim_runs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    created_at REAL NOT NULL,
    model TEXT NOT NULL,
    method TEXT NOT NULL,
    artefact TEXT NOT NULL DEFAULT '',
    request TEXT NOT NULL,
    result TEXT NOT NULL
);

CREATE INDEX sim_runs_created ON sim_runs (created_at);

CREATE INDEX sim_runs_kind_model ON sim_runs (kind, model, created_at)
