"""The control API, /api/*: keys, routes, upstreams, models, engines, usage, bundles.

JSON in and out; every failure is ``{"error": {"code", "message"}}`` with a fitting status.
Callers authenticate with a session cookie or an API key; every route needs the permission
that ``appliance.identity.rbac`` names for it (routes missing from that table are refused).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web

from appliance.bundle.importer import check_bundle_dir, import_bundle
from appliance.bundle.jobs import audit_import
from appliance.gateway import keys as keys_api
from appliance.gateway import routing
from appliance.identity.http import principal_of, source_address
from appliance.kernel.errors import ApplianceError, BadRequest, NotFound
from appliance.models.registry import list_models
from appliance.telemetry.usage import parse_window, usage_query

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_encode = msgspec.json.Encoder().encode


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=_encode(data), content_type="application/json")


def api_error(error: ApplianceError) -> web.Response:
    body: dict[str, Any] = {"code": error.code, "message": error.message}
    if error.param:
        body["param"] = error.param
    return json_response({"error": body}, status=error.status)


class NewKey(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    project_id: str = "default"
    models: list[str] = []
    rpm: int | None = None
    tpm: int | None = None
    role: str = "inference"
    expires_in_s: float | None = None
    allowed_ips: list[str] = []
    tokens_per_day: int | None = None
    tokens_per_month: int | None = None


class ImportRequest(msgspec.Struct, forbid_unknown_fields=True):
    path: str
    allow_unsigned: bool = False


# (method, path, summary) of every route: the source of the OpenAPI document.
OPERATIONS: list[tuple[str, str, str]] = []


class ControlApi:
    """Views of /api. ``services`` is the composition root's object holding shared parts."""

    def __init__(self, services: Any) -> None:
        self.s = services

    def add_routes(self, app: web.Application) -> None:
        def add(method: str, path: str, handler: Handler) -> None:
            app.router.add_route(method, path, handler)
            OPERATIONS.append((method, path, (handler.__doc__ or "").strip().split("\n")[0]))

        OPERATIONS.clear()
        add("GET", "/api/openapi.json", self.openapi)
        add("GET", "/api/status", self.status)
        add("GET", "/api/keys", self.list_keys)
        add("POST", "/api/keys", self.create_key)
        add("DELETE", "/api/keys/{id}", self.revoke_key)
        add("GET", "/api/upstreams", self.list_upstreams)
        add("POST", "/api/upstreams", self.put_upstream)
        add("DELETE", "/api/upstreams/{name}", self.remove_upstream)
        add("GET", "/api/routes", self.list_routes)
        add("POST", "/api/routes", self.put_route)
        add("DELETE", "/api/routes/{model:.+}", self.remove_route)
        add("GET", "/api/models", self.models)
        add("GET", "/api/engines", self.engines)
        add("GET", "/api/usage", self.usage)
        add("POST", "/api/keys/{id}/rotate", self.rotate_key)
        add("POST", "/api/bundles/import", self.import_bundle)
        self.s.identity.add_routes(app, add)

    @staticmethod
    def middleware(authorize: Callable[[web.Request], Awaitable[None]]) -> Any:
        """Errors as one envelope; ``authorize`` (identity) checks the permission table."""
        @web.middleware
        async def control_api(request: web.Request, handler: Handler) -> web.StreamResponse:
            if not request.path.startswith("/api/"):
                return await handler(request)
            try:
                await authorize(request)
                return await handler(request)
            except ApplianceError as exc:
                return api_error(exc)
            except web.HTTPRequestEntityTooLarge as exc:
                return api_error(BadRequest(exc.text or "request body too large"))
        return control_api

    async def _body(self, request: web.Request, kind: type[Any]) -> Any:
        try:
            return msgspec.json.decode(await request.read(), type=kind)
        except msgspec.ValidationError as exc:
            raise BadRequest(f"invalid request: {exc}") from None
        except msgspec.DecodeError as exc:
            raise BadRequest(f"request body is not valid JSON: {exc}") from None

    async def openapi(self, request: web.Request) -> web.Response:
        """The OpenAPI 3.1 document of this API."""
        paths: dict[str, dict[str, Any]] = {}
        for method, path, summary in OPERATIONS:
            clean = path.replace(":.+}", "}")
            params = [{"name": p.strip("{}").split(":")[0], "in": "path", "required": True,
                       "schema": {"type": "string"}}
                      for p in clean.split("/") if p.startswith("{")]
            paths.setdefault(clean, {})[method.lower()] = {
                "summary": summary, "parameters": params,
                "responses": {"200": {"description": "OK"},
                              "4XX": {"description": "Error envelope"}}}
        return json_response({
            "openapi": "3.1.0",
            "info": {"title": "Foundry Appliance control API", "version": "1"},
            "components": {"securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "session": {"type": "apiKey", "in": "cookie", "name": "fa_session"}}},
            "security": [{"bearer": []}, {"session": []}], "paths": paths})

    async def status(self, request: web.Request) -> web.Response:
        """Readiness, engines and versions in one object."""
        return json_response(self.s.status())

    async def list_keys(self, request: web.Request) -> web.Response:
        """API keys of the projects the caller may see (never their secrets)."""
        revoked = request.query.get("include_revoked") in ("1", "true")
        allowed = principal_of(request).project_ids("keys.read")
        found = await keys_api.list_keys(self.s.store, include_revoked=revoked)
        return json_response([k for k in found if allowed is None or k.project_id in allowed])

    async def _own_key(self, request: web.Request) -> keys_api.ApiKey:
        """The key named in the path, or 404 when it belongs to a project the caller can't
        manage (a foreign key looks like no key)."""
        key = await keys_api.get_key(self.s.store, request.match_info["id"])
        if not principal_of(request).can("keys.write", key.project_id):
            raise NotFound(f"no API key {key.id!r}", param="id", code="key_not_found")
        return key

    async def create_key(self, request: web.Request) -> web.Response:
        """Create an API key in a project; the secret is in this response only."""
        body: NewKey = await self._body(request, NewKey)
        principal = principal_of(request)
        if not principal.can("keys.write", body.project_id):
            raise NotFound(f"no project {body.project_id!r}", param="project_id",
                           code="project_not_found")
        if body.role == "admin" and not principal.has("users.write"):
            raise BadRequest("only an administrator may create admin keys", param="role")
        expires = time.time() + body.expires_in_s if body.expires_in_s else None
        created = await keys_api.create_key(
            self.s.store, name=body.name, project_id=body.project_id, models=body.models,
            rpm=body.rpm, tpm=body.tpm, role=body.role, expires_at=expires,
            allowed_ips=body.allowed_ips, tokens_per_day=body.tokens_per_day,
            tokens_per_month=body.tokens_per_month, actor=principal.name,
            source_address=source_address(request))
        return json_response(created, status=201)

    async def revoke_key(self, request: web.Request) -> web.Response:
        """Revoke an API key (takes effect at once)."""
        own = await self._own_key(request)
        key = await keys_api.revoke_key(self.s.store, own.id, actor=principal_of(request).name,
                                        source_address=source_address(request))
        self.s.verifier.invalidate()
        return json_response(key)

    async def rotate_key(self, request: web.Request) -> web.Response:
        """Give a key a new secret (same id and options); the old secret stops at once."""
        own = await self._own_key(request)
        created = await keys_api.rotate_key(self.s.store, own.id,
                                            actor=principal_of(request).name,
                                            source_address=source_address(request))
        self.s.verifier.invalidate()
        return json_response(created)

    async def list_upstreams(self, request: web.Request) -> web.Response:
        """Upstreams with health and breaker state (keys hidden)."""
        out = []
        for up in await routing.list_upstreams(self.s.store):
            item = msgspec.to_builtins(up)
            item["api_key"] = "set" if up.api_key else ""
            out.append(item)
        return json_response(out)

    async def put_upstream(self, request: web.Request) -> web.Response:
        """Create or replace an upstream."""
        rec: routing.UpstreamRecord = await self._body(request, routing.UpstreamRecord)
        rec.source = "api"
        await routing.put_upstream(self.s.store, rec, actor=principal_of(request).name,
                                   source_address=source_address(request))
        await self.s.reload()
        return json_response({"name": rec.name}, status=201)

    async def remove_upstream(self, request: web.Request) -> web.Response:
        """Remove an upstream no route uses."""
        await routing.remove_upstream(self.s.store, request.match_info["name"],
                                      actor=principal_of(request).name,
                                      source_address=source_address(request))
        await self.s.reload()
        return json_response({"removed": request.match_info["name"]})

    async def list_routes(self, request: web.Request) -> web.Response:
        """Routes with the live state of each target."""
        out = []
        for route in await routing.list_routes(self.s.store):
            item = msgspec.to_builtins(route)
            item["target_state"] = [self.s.target_state(t) for t in route.targets]
            out.append(item)
        return json_response(out)

    async def put_route(self, request: web.Request) -> web.Response:
        """Create or replace a route."""
        rec: routing.RouteRecord = await self._body(request, routing.RouteRecord)
        rec.source = "api"
        await routing.put_route(self.s.store, rec, actor=principal_of(request).name,
                                source_address=source_address(request))
        await self.s.reload()
        return json_response({"model": rec.model}, status=201)

    async def remove_route(self, request: web.Request) -> web.Response:
        """Remove a route."""
        await routing.remove_route(self.s.store, request.match_info["model"],
                                   actor=principal_of(request).name,
                                   source_address=source_address(request))
        await self.s.reload()
        return json_response({"removed": request.match_info["model"]})

    async def models(self, request: web.Request) -> web.Response:
        """Imported models, every version, and which is active."""
        return json_response(await list_models(self.s.store))

    async def engines(self, request: web.Request) -> web.Response:
        """Local engine workers and their state."""
        return json_response([e.status() for e in self.s.supervisor.engines.values()])

    async def usage(self, request: web.Request) -> web.Response:
        """Requests, tokens, errors, TTFT and latency percentiles over a window."""
        window = parse_window(request.query.get("window", "1h"))
        group_by = request.query.get("group_by", "model")
        report = await asyncio.wrap_future(self.s.metrics.query(usage_query(window, group_by)))
        return json_response(report)

    async def import_bundle(self, request: web.Request) -> web.Response:
        """Import a bundle directory that is on this host (e.g. a mounted USB stick)."""
        body: ImportRequest = await self._body(request, ImportRequest)
        root = check_bundle_dir(Path(body.path))
        result = await asyncio.to_thread(import_bundle, self.s.data_dir, root,
                                         allow_unsigned=body.allow_unsigned)
        await audit_import(self.s.store, actor=principal_of(request).name, source=body.path,
                           source_address=source_address(request), result=result)
        await self.s.reload()
        return json_response(result, status=201 if not result.already_imported else 200)
