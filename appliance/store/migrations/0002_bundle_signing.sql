-- Bundle signatures: the site's trusted signing keys, who signed each bundle, an audit trail.
CREATE TABLE trusted_keys (
    key_id TEXT PRIMARY KEY,
    public_key TEXT NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    added_at REAL NOT NULL,
    added_by TEXT NOT NULL
);

CREATE TABLE audit_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '{}'
);

CREATE INDEX audit_log_at ON audit_log (at);

ALTER TABLE bundles ADD COLUMN signed_by TEXT
