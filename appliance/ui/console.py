"""Wires the console into the application: pages, sign-in, static files, doors and events."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from aiohttp import web

from appliance.ui import auth_views, proxy
from appliance.ui.assets import template_env, web_root
from appliance.ui.events import events
from appliance.ui.pages import CONSOLE, ConsoleState, page_handler
from appliance.ui.views import all_pages, extra_routes

if TYPE_CHECKING:
    from appliance.app import Services


async def _console_ctx(app: web.Application) -> AsyncIterator[None]:
    yield
    state = app[CONSOLE]
    state.stopping.set()
    if state.client is not None:
        await state.client.close()


async def _stop_streams(app: web.Application) -> None:
    # open event streams end now, so a graceful shutdown does not wait on them
    app[CONSOLE].stopping.set()


def add_routes(app: web.Application, services: Services) -> ConsoleState:
    """Serve the operator's console at ``/`` (pages), ``/static``, ``/ui/*`` and sign-in."""
    root = web_root()
    pages = all_pages()
    state = ConsoleState(services=services, env=template_env(root), pages=pages)
    app[CONSOLE] = state
    for page in pages:
        app.router.add_get(page.path, page_handler(page))
    app.router.add_get("/sign-in", auth_views.sign_in_page)
    app.router.add_post("/sign-in", auth_views.sign_in)
    app.router.add_post("/sign-out", auth_views.sign_out)
    app.router.add_get("/ui/events", events)
    app.router.add_route("*", "/ui/api/{tail:.*}", proxy.api_door)
    app.router.add_route("*", "/ui/v1/{tail:.*}", proxy.v1_door)
    for method, path, handler in extra_routes():
        app.router.add_route(method, path, handler)
    app.router.add_static("/static", root / "static")
    app.on_shutdown.append(_stop_streams)
    app.cleanup_ctx.append(_console_ctx)
    return state

