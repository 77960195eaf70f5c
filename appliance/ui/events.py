"""``/ui/events``: server-sent events that keep the overview live (no polling)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import msgspec
from aiohttp import web

from appliance.gateway.keys import ApiKey, list_keys
from appliance.kernel.errors import ApplianceError
from appliance.ui.pages import CONSOLE, ConsoleState, health
from appliance.ui.proxy import json_error, operator_for_call
from appliance.ui.series import overview_query, window_of

log = logging.getLogger(__name__)
PERIOD_S = 2.0
HEARTBEAT_S = 15.0


async def overview_snapshot(state: ConsoleState, window: str) -> dict[str, Any]:
    """Health, engines, upstreams and the usage numbers of the overview in one object."""
    s = state.services
    _, seconds, bucket = window_of(window)
    numbers = await asyncio.wrap_future(s.metrics.query(overview_query(seconds, bucket)))
    names = {k.id: k.name for k in await list_key_names(state)}
    for row in numbers["top_keys"]:
        row["label"] = names.get(row["name"], row["name"])
    return {"window": window, "health": health(s), "engines": engines_of(state),
            "upstreams": upstream_health(state), "in_flight": s.meter.in_flight,
            **numbers}


async def list_key_names(state: ConsoleState) -> list[ApiKey]:
    return await list_keys(state.services.store, include_revoked=True)


def engines_of(state: ConsoleState) -> list[dict[str, Any]]:
    return [msgspec.to_builtins(e.status()) for e in state.services.supervisor.engines.values()]


def upstream_health(state: ConsoleState) -> list[dict[str, Any]]:
    """Each upstream with the breaker state of the route targets that use it."""
    s = state.services
    out = []
    for name, up in sorted(s.router.upstreams.items()):
        targets = [s.target_state(t) for r in s.router.routes.values() for t in r.targets
                   if t.split(":", 1)[0] == name]
        breakers = sorted({t.get("breaker", "closed") for t in targets})
        state_word = ("open" if "open" in breakers else "half_open" if "half_open" in breakers
                      else "closed" if targets else "unused")
        out.append({"name": name, "kind": up.kind, "base_url": up.base_url,
                    "breaker": state_word, "in_flight": sum(t.get("in_flight", 0)
                                                            for t in targets)})
    return out


async def events(request: web.Request) -> web.StreamResponse:
    """Push the overview snapshot every couple of seconds while it changes."""
    operator = await operator_for_call(request)
    if isinstance(operator, web.Response):
        return operator
    state = request.app[CONSOLE]
    window = request.query.get("window", "1h")
    try:
        window_of(window)
    except ApplianceError as exc:
        return json_error(400, exc.code, exc.message)
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream", "Cache-Control": "no-store",
        "X-Accel-Buffering": "no"})
    await response.prepare(request)
    last = b""
    last_sent = 0.0
    try:
        while not state.stopping.is_set():
            snapshot = msgspec.json.encode(await overview_snapshot(state, window))
            if snapshot != last:
                await response.write(b"event: overview\ndata: " + snapshot + b"\n\n")
                last, last_sent = snapshot, time.monotonic()
            elif time.monotonic() - last_sent > HEARTBEAT_S:
                await response.write(b": keep-alive\n\n")
                last_sent = time.monotonic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(state.stopping.wait(), PERIOD_S)
    except ConnectionResetError:
        log.debug("overview event stream closed by the browser")
    return response
