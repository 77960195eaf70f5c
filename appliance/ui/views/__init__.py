"""The console's pages. Each module lists its pages in ``PAGES`` (and extra endpoints in
``ROUTES``); adding a page is one template in ``web/templates`` and one view function."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from appliance.ui.pages import Page
from appliance.ui.views import (
    access,
    audit,
    bundles,
    deployments,
    hosts,
    keys,
    models,
    overview,
    playground,
    registry,
    routes,
    simulator,
    usage,
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MODULES = (overview, usage, models, routes, playground, hosts, deployments, keys, access, audit,
           bundles, registry, simulator)


def all_pages() -> list[Page]:
    """Every page in navigation order."""
    return [page for module in MODULES for page in module.PAGES]


def extra_routes() -> list[tuple[str, str, Handler]]:
    """(method, path, handler) of the endpoints pages use besides the doors to /api."""
    return [route for module in MODULES for route in getattr(module, "ROUTES", ())]
