-- The read-only OCI registry scopes blobs to repositories: a blob is served under a repository
-- only when one of its manifests (or an index's child manifests) names it as config or layer.
-- Rows imported before this table existed are filled at server start from the stored
-- manifests (appliance.bundle.manage.backfill_image_blobs).
CREATE TABLE image_blobs (
    repository TEXT NOT NULL,
    digest TEXT NOT NULL,
    bundle_id TEXT NOT NULL REFERENCES bundles(id),
    PRIMARY KEY (repository, digest, bundle_id)
)
