"""The page framework: one base template, and a page is one template plus one view function.

A view receives a :class:`PageRequest` and returns the template's context; the framework
checks the sign-in, adds what every page shows (navigation, site name, health, the CSRF
token) and renders the template. Views live in ``appliance/ui/views/``; each module lists its
pages in ``PAGES``.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
import jinja2
from aiohttp import web
from yarl import URL

from appliance import __version__
from appliance.identity.rbac import GLOBAL_ROLES
from appliance.ui.auth import Operator, current_operator

if TYPE_CHECKING:
    from appliance.app import Services

log = logging.getLogger(__name__)

SECTIONS = ("Monitor", "Serve", "Infrastructure", "Access", "Content", "Plan")
# Everything a page loads comes from this appliance; the JSON data blocks are not scripts.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data:; connect-src 'self'; font-src 'self'; object-src 'none'; "
       "base-uri 'self'; form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                    "Referrer-Policy": "same-origin", "X-Frame-Options": "DENY",
                    "Cache-Control": "no-store"}

View = Callable[["PageRequest"], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class Page:
    """One page of the console."""

    path: str
    name: str  # the navigation label and default title
    template: str
    view: View
    section: str = "Monitor"
    admin: bool = False  # pages for the admin role only; the API checks every action anyway
    nav: bool = True
    summary: str = ""  # one line under the title
    permission: str = ""  # shown in the navigation only to roles with this permission


def can(operator: Operator | None, permission: str) -> bool:
    """Whether the operator's global role grants ``permission`` (rbac's table)."""
    if operator is None:
        return False
    if not permission or operator.is_admin:
        return True
    return permission in GLOBAL_ROLES.get(operator.role, frozenset())


@dataclass
class ConsoleState:
    """What the console's views share, one per application."""

    services: Services
    env: jinja2.Environment
    pages: list[Page]
    csrf_secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    site: str = field(default_factory=socket.gethostname)
    client: aiohttp.ClientSession | None = None
    # user id -> (Authorization value, expiry) of their playground key; memory only
    playground_keys: dict[str, tuple[str, float]] = field(default_factory=dict)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    def http(self) -> aiohttp.ClientSession:
        """The session for calls to this appliance's own /api and /v1 (loopback)."""
        if self.client is None or self.client.closed:
            self.client = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=5))
        return self.client


CONSOLE = web.AppKey("console", ConsoleState)


@dataclass
class PageRequest:
    """What a view gets: the request, the shared services and the signed-in operator."""

    request: web.Request
    state: ConsoleState
    operator: Operator

    @property
    def services(self) -> Services:
        return self.state.services

    @property
    def query(self) -> Any:
        return self.request.query


def health(services: Services) -> dict[str, Any]:
    """The one-word health shown in every page header, with the reason."""
    engines = [e.status() for e in services.supervisor.engines.values()]
    failed = [e.name for e in engines if e.state == "failed"]
    starting = [e.name for e in engines if e.state not in ("ready", "failed")]
    if not services.is_ready():
        return {"state": "starting", "text": "Starting", "detail": "stores or engines loading"}
    if failed:
        return {"state": "degraded", "text": "Degraded",
                "detail": "engine failed: " + ", ".join(failed)}
    if starting:
        return {"state": "degraded", "text": "Degraded",
                "detail": "engine starting: " + ", ".join(starting)}
    if services.starter_error and not engines:
        return {"state": "degraded", "text": "No models", "detail": services.starter_error}
    return {"state": "ok", "text": "Healthy",
            "detail": f"{len(engines)} engine(s) ready, {len(services.router.models())} models"}


def html_response(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8",
                        headers=SECURITY_HEADERS)


def base_context(request: web.Request, state: ConsoleState,
                 operator: Operator | None) -> dict[str, Any]:
    nav: list[dict[str, Any]] = []
    for section in SECTIONS if operator is not None else ():
        items = [p for p in state.pages if p.section == section and p.nav
                 and (not p.admin or (operator is not None and operator.is_admin))
                 and can(operator, p.permission)]
        if items:
            nav.append({"section": section, "pages": items})
    return {"site": state.site, "product": "Foundry Appliance", "version": __version__,
            "nav": nav, "path": request.path, "operator": operator,
            "csrf": operator.csrf if operator else "",
            "health": health(state.services), "now": time.time()}


def render(state: ConsoleState, template: str, context: dict[str, Any],
           status: int = 200) -> web.Response:
    return html_response(state.env.get_template(template).render(context), status=status)


def page_handler(page: Page) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The aiohttp handler of one page: sign-in check, the view, the template."""

    async def handler(request: web.Request) -> web.StreamResponse:
        state = request.app[CONSOLE]
        operator = await current_operator(request, state.services, state.csrf_secret)
        if operator is None:
            raise web.HTTPSeeOther(str(URL("/sign-in").with_query(next=request.path_qs)))
        context = base_context(request, state, operator)
        if page.admin and not operator.is_admin:
            context.update(page=page, title=page.name)
            return render(state, "forbidden.html", context, status=403)
        context.update(page=page, title=page.name)
        context.update(await page.view(PageRequest(request, state, operator)))
        return render(state, page.template, context)

    handler.__name__ = f"page_{page.template.removesuffix('.html')}"
    return handler
