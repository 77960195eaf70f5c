-- state.db of a data dir made by appliance 0.1.0 (commit 1e3a6d7, schema 0001): one key,
-- one upstream, one route. tests/cli/test_upgrade.py opens it with today's migrations.
BEGIN TRANSACTION;
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    project_id TEXT NOT NULL DEFAULT 'default',
    secret_hash TEXT NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    role TEXT NOT NULL DEFAULT 'inference',
    models TEXT NOT NULL DEFAULT '[]',
    rpm INTEGER,
    tpm INTEGER,
    created_at REAL NOT NULL,
    expires_at REAL,
    revoked_at REAL
);
INSERT INTO "api_keys" VALUES('key_7349990bf7ca','release-0.1.0','default','c260a67627c64966d419e116f2e680173eb8e32a64268e32120811a7b194be0d','sk-fa-J8JB','inference','[]',NULL,NULL,1.79577061201115632058e+09,NULL,NULL);
CREATE TABLE blob_refs (
    digest TEXT NOT NULL REFERENCES blobs(digest),
    owner TEXT NOT NULL,
    PRIMARY KEY (digest, owner)
);
CREATE TABLE blobs (
    digest TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE bundles (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    created TEXT NOT NULL,
    manifest_digest TEXT NOT NULL UNIQUE,
    source_path TEXT NOT NULL,
    imported_at REAL NOT NULL
);
CREATE TABLE models (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    task TEXT NOT NULL,
    format TEXT NOT NULL,
    files TEXT NOT NULL,
    size INTEGER NOT NULL,
    metadata TEXT NOT NULL DEFAULT '{}',
    bundle_id TEXT REFERENCES bundles(id),
    created_at REAL NOT NULL,
    active INTEGER NOT NULL DEFAULT 1,
    UNIQUE (name, version)
);
CREATE TABLE routes (
    model TEXT PRIMARY KEY,
    targets TEXT NOT NULL DEFAULT '[]',
    strategy TEXT NOT NULL DEFAULT 'least_outstanding',
    weights TEXT NOT NULL DEFAULT '[]',
    fallback TEXT NOT NULL DEFAULT '[]',
    source TEXT NOT NULL DEFAULT 'api',
    updated_at REAL NOT NULL
);
INSERT INTO "routes" VALUES('llama-3-8b','["gpu-a"]','least_outstanding','[]','["smollm2-135m-instruct"]','api',1.79577061506028699874e+09);
CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL);
INSERT INTO "schema_migrations" VALUES(1,'0001_init.sql','2026-11-27 09:10:11');
CREATE TABLE upstreams (
    name TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    base_url TEXT NOT NULL,
    api_key TEXT NOT NULL DEFAULT '',
    options TEXT NOT NULL DEFAULT '{}',
    source TEXT NOT NULL DEFAULT 'api',
    updated_at REAL NOT NULL
);
INSERT INTO "upstreams" VALUES('gpu-a','openai','http://10.0.0.5:8000/v1','','{}','api',1.79577061332383060452e+09);
COMMIT;
