"""API keys: create (the secret is shown once), limits, usage per key, revoke."""

from __future__ import annotations

import asyncio
from typing import Any

from appliance.gateway.keys import ROLES, list_keys
from appliance.telemetry.usage import usage_query
from appliance.ui.pages import Page, PageRequest


async def keys(req: PageRequest) -> dict[str, Any]:
    """Keys with their 30-day usage; revoked keys on request."""
    show_revoked = req.query.get("revoked") == "1"
    found = await list_keys(req.services.store, include_revoked=show_revoked)
    report = await asyncio.wrap_future(
        req.services.metrics.query(usage_query(30 * 86400, "key")))
    used = {r.group: r for r in report.rows}
    return {"keys": found, "used": used, "roles": ROLES, "show_revoked": show_revoked,
            "models": req.services.router.models()}


PAGES = (Page("/keys", "API keys", "keys.html", keys, section="Access",
              summary="Keys for applications: limits, usage, revocation."),)
