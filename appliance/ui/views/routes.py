"""Routes and upstreams: list, create, edit, test; health and breaker state per target."""

from __future__ import annotations

from typing import Any

from appliance.gateway.routing import list_routes, list_upstreams
from appliance.ui.events import upstream_health
from appliance.ui.pages import Page, PageRequest


async def routes(req: PageRequest) -> dict[str, Any]:
    """Routes with the live state of each target; upstreams with their health."""
    s = req.services
    found = await list_routes(s.store)
    states = {r.model: [s.target_state(t) for t in r.targets] for r in found}
    ups = await list_upstreams(s.store)
    up_health = {u["name"]: u for u in upstream_health(req.state)}
    local = sorted(s.supervisor.engines)
    tasks = {name: e.spec.task for name, e in s.supervisor.engines.items()}
    return {"routes": found, "states": states, "upstreams": ups, "up_health": up_health,
            "local": local, "tasks": tasks, "routable": s.router.models()}


PAGES = (Page("/routes", "Routes & upstreams", "routes.html", routes, section="Serve",
              summary="Which engines and providers serve each model name."),)
