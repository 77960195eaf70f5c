"""Models: what is imported, what is loaded in an engine, metadata; restart an engine."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from appliance.models.registry import list_models
from appliance.ui.pages import CONSOLE, Page, PageRequest
from appliance.ui.proxy import json_error, operator_for_call


async def _extras(services: Any) -> dict[str, dict[str, Any]]:
    """Licence and scan results recorded by the model registry, where it records them."""
    try:
        rows = await services.store.fetchall("SELECT id, licence, scan FROM models")
    except Exception:  # an older state database without those columns
        return {}
    return {r["id"]: {"licence": json.loads(r["licence"] or "{}"),
                      "scan": json.loads(r["scan"] or "{}")} for r in rows}


async def models(req: PageRequest) -> dict[str, Any]:
    """Every imported version, the engine serving the active one and routable names."""
    s = req.services
    found = await list_models(s.store)
    engines = {name: e.status() for name, e in s.supervisor.engines.items()}
    return {"models": found, "engines": engines, "extras": await _extras(s),
            "routable": s.router.models(), "engine_enabled": s.settings.engine.enabled}


async def restart_engine(request: web.Request) -> web.StreamResponse:
    """Stop a model's engine worker and start it again (reloads the model)."""
    operator = await operator_for_call(request)
    if isinstance(operator, web.Response):
        return operator
    services = request.app[CONSOLE].services
    name = request.match_info["name"]
    if services.supervisor.get(name) is None:
        return json_error(404, "engine_not_found", f"no engine serves {name!r}")
    await services.supervisor.remove(name)
    await services.reload()
    return web.json_response({"restarting": name})


PAGES = (Page("/models", "Models", "models.html", models, section="Serve",
              summary="Imported models, their engines and metadata."),)
ROUTES = (("POST", "/ui/models/{name}/restart", restart_engine),)
