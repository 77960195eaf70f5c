-- Initial schema: API keys, upstreams, routes, content blobs, bundles and models.
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

CREATE TABLE upstreams (
    name TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    base_url TEXT NOT NULL,
    api_key TEXT NOT NULL DEFAULT '',
    options TEXT NOT NULL DEFAULT '{}',
    source TEXT NOT NULL DEFAULT 'api',
    updated_at REAL NOT NULL
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

CREATE TABLE blob_refs (
    digest TEXT NOT NULL REFERENCES blobs(digest),
    owner TEXT NOT NULL,
    PRIMARY KEY (digest, owner)
);
