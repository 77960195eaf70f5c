-- Hosts and clusters (appliance/cluster): inventory, host keys, installs and their progress.
CREATE TABLE hosts (
    name TEXT PRIMARY KEY,
    address TEXT NOT NULL,
    port INTEGER NOT NULL DEFAULT 22,
    user TEXT NOT NULL,
    auth TEXT NOT NULL,                 -- 'key' | 'password'
    secret BLOB NOT NULL,               -- sealed private key or password
    jump_host TEXT,                     -- name of another host to tunnel through
    role TEXT NOT NULL DEFAULT 'gpu',   -- 'server' | 'agent' | 'gpu'
    labels TEXT NOT NULL DEFAULT '{}',
    facts TEXT NOT NULL DEFAULT '{}',
    facts_at REAL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);

-- known_hosts kept by the appliance: the accepted key, and the last key offered when different.
CREATE TABLE host_keys (
    host TEXT PRIMARY KEY REFERENCES hosts(name) ON DELETE CASCADE,
    public_key TEXT,                    -- accepted, OpenSSH format
    fingerprint TEXT,
    accepted_at REAL,
    offered_key TEXT,                   -- last key seen that is not the accepted one
    offered_fingerprint TEXT,
    offered_at REAL
);

-- One run at a time per host, across processes (CLI and server share this file).
CREATE TABLE host_locks (
    host TEXT PRIMARY KEY,
    install_id TEXT NOT NULL,
    pid INTEGER NOT NULL,
    acquired_at REAL NOT NULL
);

CREATE TABLE installs (
    id TEXT PRIMARY KEY,
    playbook TEXT NOT NULL,
    hosts TEXT NOT NULL,
    dry_run INTEGER NOT NULL DEFAULT 0,
    vars TEXT NOT NULL DEFAULT '{}',
    status TEXT NOT NULL,               -- pending | running | success | failed | cancelled
    summary TEXT NOT NULL DEFAULT '{}',
    error TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    finished_at REAL
);

CREATE INDEX installs_created ON installs (created_at);

-- Progress of installs and deployments, replayed by /api/installs/{id}/events.
CREATE TABLE progress_events (
    stream TEXT NOT NULL,
    seq INTEGER NOT NULL,
    ts REAL NOT NULL,
    host TEXT NOT NULL DEFAULT '',
    step TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL,
    message TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (stream, seq)
);

CREATE TABLE clusters (
    name TEXT PRIMARY KEY,
    source TEXT NOT NULL,               -- 'kubeconfig' | 'k3s'
    kubeconfig BLOB NOT NULL,           -- sealed
    server TEXT NOT NULL DEFAULT '',
    namespace TEXT NOT NULL DEFAULT 'default',
    created_at REAL NOT NULL
);

CREATE TABLE deployments (
    id TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    target_kind TEXT NOT NULL,          -- 'host' | 'cluster'
    target TEXT NOT NULL,
    status TEXT NOT NULL,               -- proposed | deploying | serving | failed | deleted
    proposal TEXT NOT NULL DEFAULT '{}',
    spec TEXT NOT NULL DEFAULT '{}',
    upstream TEXT NOT NULL DEFAULT '',
    message TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
)
