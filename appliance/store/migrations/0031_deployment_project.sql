-- Deployments belong to a project, whose gpu_limit bounds the GPUs its deployments hold.
ALTER TABLE deployments ADD COLUMN project_id TEXT NOT NULL DEFAULT 'default';
