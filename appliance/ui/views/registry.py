"""Registry: the container images served at /v2/, and node configuration downloads."""

from __future__ import annotations

from typing import Any

from appliance.ui.pages import Page, PageRequest


async def registry(req: PageRequest) -> dict[str, Any]:
    """Repositories and tags from imported bundles."""
    rows = await req.services.store.fetchall(
        "SELECT t.repository, t.tag, t.digest, t.media_type, t.updated_at, b.name AS bundle"
        " FROM image_tags t LEFT JOIN bundles b ON b.id = t.bundle_id"
        " ORDER BY t.repository, t.tag")
    return {"tags": [dict(r) for r in rows], "host": req.request.host}


PAGES = (Page("/registry", "Registry", "registry.html", registry, section="Content",
              summary="Container images for cluster nodes, served from this appliance."),)
