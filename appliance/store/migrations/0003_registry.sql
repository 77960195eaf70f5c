-- The read-only OCI registry: image manifests (with their children) and tags, per bundle.
CREATE TABLE image_manifests (
    repository TEXT NOT NULL,
    digest TEXT NOT NULL,
    media_type TEXT NOT NULL,
    size INTEGER NOT NULL,
    bundle_id TEXT NOT NULL REFERENCES bundles(id),
    PRIMARY KEY (repository, digest, bundle_id)
);

CREATE INDEX image_manifests_digest ON image_manifests (digest);

CREATE TABLE image_tags (
    repository TEXT NOT NULL,
    tag TEXT NOT NULL,
    digest TEXT NOT NULL,
    media_type TEXT NOT NULL,
    bundle_id TEXT NOT NULL REFERENCES bundles(id),
    updated_at REAL NOT NULL,
    PRIMARY KEY (repository, tag)
)
