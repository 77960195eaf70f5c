-- Model registry: licence and scan results on each model row; ClamAV databases from bundles.
ALTER TABLE models ADD COLUMN licence TEXT NOT NULL DEFAULT '{}';

ALTER TABLE models ADD COLUMN scan TEXT NOT NULL DEFAULT '{}';

CREATE TABLE scanner_databases (
    name TEXT NOT NULL,
    digest TEXT NOT NULL,
    bundle_id TEXT NOT NULL REFERENCES bundles(id),
    added_at REAL NOT NULL,
    PRIMARY KEY (name, digest)
)
