"""HTTP views of hosts, installs and deployments under /api (JSON; SSE for progress).

Request → service call → response; errors are ``ApplianceError``s the control API's
middleware turns into the one envelope (and that middleware checks the RBAC table).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web

from appliance.cluster import inventory
from appliance.cluster.deployments import DeploymentRequest, DeploymentService
from appliance.cluster.inventory import HostInput
from appliance.cluster.playbook import list_playbooks
from appliance.cluster.runner import get_install, list_installs
from appliance.cluster.service import HostService
from appliance.kernel.errors import BadRequest

log = logging.getLogger(__name__)
_encode = msgspec.json.Encoder().encode
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class NewHost(HostInput, forbid_unknown_fields=True, kw_only=True):
    accept_host_key: bool = False
    host_key_fingerprint: str | None = None
    replace: bool = False


class AcceptKey(msgspec.Struct, forbid_unknown_fields=True):
    fingerprint: str


class NewInstall(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    playbook: str
    hosts: list[str]
    vars: dict[str, Any] = {}
    dry_run: bool = False


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=_encode(data), content_type="application/json")


async def _body(request: web.Request, kind: type[Any]) -> Any:
    try:
        return msgspec.json.decode(await request.read(), type=kind)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise BadRequest(f"invalid request: {exc}") from None


class ClusterViews:
    """The /api views of this component."""

    def __init__(self) -> None:
        self.hosts: HostService | None = None
        self.deployments: DeploymentService | None = None

    @property
    def svc(self) -> HostService:
        if self.hosts is None:
            raise web.HTTPServiceUnavailable(text="cluster service not started")
        return self.hosts

    @property
    def deploy(self) -> DeploymentService:
        if self.deployments is None:
            raise web.HTTPServiceUnavailable(text="cluster service not started")
        return self.deployments

    def routes(self) -> list[tuple[str, str, Handler]]:
        return [
            ("GET", "/api/hosts", self.list_hosts),
            ("POST", "/api/hosts", self.add_host),
            ("GET", "/api/hosts/{name}", self.get_host),
            ("DELETE", "/api/hosts/{name}", self.remove_host),
            ("POST", "/api/hosts/{name}/accept-key", self.accept_key),
            ("POST", "/api/hosts/{name}/check", self.check_host),
            ("GET", "/api/playbooks", self.playbooks),
            ("GET", "/api/installs", self.installs),
            ("POST", "/api/installs", self.start_install),
            ("GET", "/api/installs/{id}", self.get_install),
            ("GET", "/api/installs/{id}/events", self.install_events),
            ("GET", "/api/deployments", self.list_deployments),
            ("POST", "/api/deployments", self.propose),
            ("GET", "/api/deployments/{id}", self.get_deployment),
            ("POST", "/api/deployments/{id}/confirm", self.confirm),
            ("DELETE", "/api/deployments/{id}", self.delete_deployment),
        ]

    async def list_hosts(self, request: web.Request) -> web.Response:
        """Hosts of the inventory with their accepted key fingerprint and facts."""
        return _json(await inventory.list_hosts(self.svc.store))

    async def add_host(self, request: web.Request) -> web.Response:
        """Add a host; its offered SSH key is returned (and accepted when asked)."""
        body: NewHost = await _body(request, NewHost)
        host = HostInput(**{f: getattr(body, f) for f in HostInput.__struct_fields__})
        result = await self.svc.add_host(host, accept_host_key=body.accept_host_key,
                                         expected_fingerprint=body.host_key_fingerprint,
                                         replace=body.replace)
        return _json(result, status=201)

    async def get_host(self, request: web.Request) -> web.Response:
        """One host."""
        return _json(await inventory.get_host(self.svc.store, request.match_info["name"]))

    async def remove_host(self, request: web.Request) -> web.Response:
        """Remove a host from the inventory (nothing on the host changes)."""
        await self.svc.remove_host(request.match_info["name"])
        return _json({"removed": request.match_info["name"]})

    async def accept_key(self, request: web.Request) -> web.Response:
        """Accept the SSH host key the host offers, by its fingerprint."""
        body: AcceptKey = await _body(request, AcceptKey)
        return _json(await self.svc.accept_key(request.match_info["name"], body.fingerprint))

    async def check_host(self, request: web.Request) -> web.Response:
        """Run preflight and detect on a host; the checks and facts."""
        return _json(await self.svc.check_host(request.match_info["name"]))

    async def playbooks(self, request: web.Request) -> web.Response:
        """Playbooks shipped with the appliance."""
        books = await asyncio.to_thread(list_playbooks, self.svc.playbooks_dir)
        return _json([{"name": b.name, "description": " ".join(b.description.split()),
                       "requires": b.requires, "steps": [s.name for s in b.steps]}
                      for b in books])

    async def installs(self, request: web.Request) -> web.Response:
        """Recent installs (playbook runs)."""
        return _json(await list_installs(self.svc.store))

    async def start_install(self, request: web.Request) -> web.Response:
        """Start a playbook on hosts; follow it at /api/installs/{id}/events."""
        body: NewInstall = await _body(request, NewInstall)
        install_id = await self.svc.start_install(body.playbook, body.hosts,
                                                  variables=body.vars, dry_run=body.dry_run)
        return _json({"id": install_id, "events": f"/api/installs/{install_id}/events"},
                     status=202)

    async def get_install(self, request: web.Request) -> web.Response:
        """One install: status and per-host summary."""
        return _json(await get_install(self.svc.store, request.match_info["id"]))

    async def install_events(self, request: web.Request) -> web.StreamResponse:
        """Progress per host and step as server-sent events, until the install ends."""
        events = await self.svc.events(request.match_info["id"])
        return await sse(request, events)

    async def list_deployments(self, request: web.Request) -> web.Response:
        """Deployments: proposed, deploying, serving, failed."""
        return _json(await self.deploy.list())

    async def propose(self, request: web.Request) -> web.Response:
        """Pick a model and a target; the simulator proposes a configuration to confirm."""
        body: DeploymentRequest = await _body(request, DeploymentRequest)
        return _json(await self.deploy.propose(body), status=201)

    async def get_deployment(self, request: web.Request) -> web.Response:
        """One deployment with its proposal and state."""
        return _json(await self.deploy.get(request.match_info["id"]))

    async def confirm(self, request: web.Request) -> web.Response:
        """Confirm a proposal: deploy, then route it through the gateway."""
        dep = await self.deploy.confirm(request.match_info["id"])
        return _json(dep, status=202)

    async def delete_deployment(self, request: web.Request) -> web.Response:
        """Remove a deployment's route target (and its cluster objects)."""
        return _json(await self.deploy.delete(request.match_info["id"]))


async def sse(request: web.Request, events: AsyncIterator[Any]) -> web.StreamResponse:
    """Stream ``events`` (msgspec-encodable) as ``data:`` lines, then ``event: end``."""
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                       "Cache-Control": "no-cache",
                                       "X-Accel-Buffering": "no"})
    await resp.prepare(request)
    async for event in events:
        await resp.write(b"id: %d\ndata: %s\n\n" % (getattr(event, "seq", 0), _encode(event)))
    await resp.write(b"event: end\ndata: {}\n\n")
    await resp.write_eof()
    return resp


CLUSTER_VIEWS: web.AppKey[ClusterViews] = web.AppKey("cluster_views", ClusterViews)


def add_routes(app: web.Application, services: Any,
               operations: list[tuple[str, str, str]] | None = None) -> ClusterViews:
    """Mount the views and the cleanup context that owns the host and deployment services.

    ``services`` is the composition root's object (``store``, ``data_dir``, ``settings``,
    ``blobs``); ``operations`` is the control API's list feeding /api/openapi.json.
    """
    views = ClusterViews()
    app[CLUSTER_VIEWS] = views
    for method, path, handler in views.routes():
        app.router.add_route(method, path, handler)
        if operations is not None:
            operations.append((method, path, (handler.__doc__ or "").strip().split("\n")[0]))

    async def cluster_ctx(app: web.Application) -> AsyncIterator[None]:
        settings = services.settings
        host, port = settings.host_port
        views.hosts = HostService(services.store, services.data_dir, settings.cluster,
                                  advertise_url=f"http://{host}:{port}",
                                  blob_path=services.blobs.path)
        views.deployments = DeploymentService(views.hosts, settings)
        yield
        await views.deployments.close()
        await views.hosts.close()

    app.cleanup_ctx.append(cluster_ctx)
    return views
