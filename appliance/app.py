"""Composition root: builds the aiohttp application and wires every component.

Each long-lived resource is one ``cleanup_ctx`` step (start, yield, stop), torn down in
reverse order after the server has stopped accepting and drained in-flight requests.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path
from typing import Any

from aiohttp import web

from appliance import __version__
from appliance.bundle.http import add_routes as add_bundle_routes
from appliance.bundle.importer import import_bundle
from appliance.bundle.manage import backfill_image_blobs
from appliance.cluster.http import add_routes as add_cluster_routes
from appliance.content.registry import add_routes as add_registry_routes
from appliance.content.store import BlobStore
from appliance.control import OPERATIONS, ControlApi, json_response
from appliance.engines.supervisor import EngineState, EngineSupervisor
from appliance.gateway.http import GatewayViews, openai_errors
from appliance.gateway.keys import KeyVerifier
from appliance.gateway.limits import RateLimiter
from appliance.gateway.metering import Meter
from appliance.gateway.proxy import Forwarder
from appliance.gateway.routing import LocalEngines, Router, list_routes, list_upstreams, sync_config
from appliance.identity import bootstrap as identity_bootstrap
from appliance.identity.http import IDENTITY, Identity
from appliance.identity.projects import list_projects
from appliance.identity.quotas import QuotaGate, seed_query
from appliance.kernel.tasks import TaskGroupOwner
from appliance.models.registry import engine_spec, list_models
from appliance.settings import Settings
from appliance.store.metrics import MetricsWriter
from appliance.store.state import StateStore, open_sync
from appliance.ui import add_routes as add_ui_routes

log = logging.getLogger(__name__)
SERVICES: web.AppKey[Services]
CHANGE_POLL_S = 1.0


class _EngineDirectory(LocalEngines):
    def __init__(self, supervisor: EngineSupervisor) -> None:
        self.supervisor = supervisor

    def names(self) -> list[str]:
        return list(self.supervisor.engines)

    def base_url(self, name: str) -> str | None:
        engine = self.supervisor.get(name)
        return engine.base_url if engine else None

    def token(self, name: str) -> str:
        engine = self.supervisor.get(name)
        return engine.token if engine else ""


class Services:
    """Everything the views share, created once per application."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.data_dir: Path = settings.data_path
        self.started = time.time()
        self.blobs = BlobStore(self.data_dir / "blobs")
        self.supervisor = EngineSupervisor(
            start_timeout_s=settings.engine.start_timeout_s,
            health_interval_s=settings.engine.health_interval_s,
            backoff_max_s=settings.engine.restart_backoff_max_s)
        self.router = Router(settings.gateway, _EngineDirectory(self.supervisor))
        self.limiter = RateLimiter()
        self.quotas = QuotaGate()
        self.meter = Meter(None)
        self.tasks = TaskGroupOwner("app")
        self.starter_error = ""
        self.store = StateStore(self.data_dir)
        self.verifier = KeyVerifier(self.store, ttl=settings.auth.key_cache_ttl_s)
        self.identity = Identity(self.store, settings, self.verifier)
        self.metrics = MetricsWriter(self.data_dir,
                                     flush_interval_s=settings.metrics.flush_interval_s)
        self.forwarder = Forwarder(settings.gateway)
        self.ready = False

    # --- state that other processes may change ---------------------------------------------

    async def reload(self) -> None:
        """Re-read routes, upstreams, keys and models from the state database."""
        self.router.load(await list_upstreams(self.store), await list_routes(self.store))
        self.quotas.load(await list_projects(self.store))
        self.verifier.invalidate()
        await self._reconcile_engines()

    async def _reconcile_engines(self) -> None:
        if not self.settings.engine.enabled:
            return
        wanted = {}
        for model in await list_models(self.store, active_only=True):
            spec = engine_spec(model, self.blobs, self.settings.engine)
            if spec is not None:
                wanted[spec.name] = spec
        for name in list(self.supervisor.engines):
            if name not in wanted:
                await self.supervisor.remove(name)
        for name, spec in wanted.items():
            current = self.supervisor.get(name)
            if current is None or current.spec != spec:
                await self.supervisor.add(spec)

    async def watch_changes(self) -> None:
        """Pick up commits by CLI commands (keys, routes, imports) without a restart."""
        while True:
            await asyncio.sleep(CHANGE_POLL_S)
            try:
                if await self.store.changed():
                    log.info("state changed on disk; reloading")
                    await self.reload()
            except Exception:
                log.exception("reload after a state change failed")

    async def import_starter(self) -> None:
        """First start: import the starter bundle when this data dir has no models yet."""
        if await list_models(self.store):
            return
        bundle = self.settings.starter_bundle_path
        if not (bundle / "bundle.json").exists():
            self.starter_error = (f"no starter bundle at {bundle}; build it with `make bundle` "
                                  "or import one with `appliance bundle import`")
            log.warning("%s", self.starter_error)
            return
        log.info("importing the starter bundle from %s", bundle)
        # `make bundle` builds the starter unsigned: allowed for this configured path only
        result = await asyncio.to_thread(import_bundle, self.data_dir, bundle,
                                         allow_unsigned=True)
        log.info("starter bundle imported: %s", ", ".join(result.models))

    # --- read-outs ---------------------------------------------------------------------------

    def target_state(self, spec: str) -> dict[str, Any]:
        target = self.router.target(spec) if spec.split(":", 1)[0] in self.router.upstreams \
            else None
        if target is None:
            return {"target": spec, "available": False}
        return {"target": spec, "available": target.available, "in_flight": target.in_flight,
                "breaker": target.breaker.state.value, "failures": target.breaker.failures}

    def status(self) -> dict[str, Any]:
        return {
            "version": __version__, "ready": self.is_ready(),
            "uptime_s": time.time() - self.started,
            "data_dir": str(self.data_dir), "engines": [
                e.status() for e in self.supervisor.engines.values()],
            "models": self.router.models(), "starter_error": self.starter_error,
        }

    def is_ready(self) -> bool:
        return self.ready and self.supervisor.settled()

    def engine_gauges(self) -> list[str]:
        out = ["# HELP appliance_engine_up Whether a local engine is ready (1) or not (0).",
               "# TYPE appliance_engine_up gauge"]
        for e in self.supervisor.engines.values():
            up = 1 if e.state is EngineState.READY else 0
            out.append(f'appliance_engine_up{{model="{e.spec.name}"}} {up}')
        out += ["# HELP appliance_engine_restarts_total Engine worker restarts.",
                "# TYPE appliance_engine_restarts_total counter"]
        out += [f'appliance_engine_restarts_total{{model="{e.spec.name}"}} {e.restarts}'
                for e in self.supervisor.engines.values()]
        return out


SERVICES = web.AppKey("services", Services)


# --- cleanup contexts, in start order ---------------------------------------------------------


async def _state_ctx(app: web.Application) -> AsyncIterator[None]:
    s = app[SERVICES]
    s.data_dir.mkdir(parents=True, exist_ok=True)
    await s.store.open()
    await sync_config(s.store, s.settings)
    added = await asyncio.to_thread(_backfill_image_blobs, s.data_dir, s.blobs)
    if added:
        log.info("registry: %d blob references filled in from stored image manifests", added,
                 extra={"rows": added})
    yield
    await s.store.close()


def _backfill_image_blobs(data_dir: Path, blobs: BlobStore) -> int:
    with closing(open_sync(data_dir)) as conn:
        return backfill_image_blobs(conn, blobs)


async def _identity_ctx(app: web.Application) -> AsyncIterator[None]:
    s = app[SERVICES]
    await identity_bootstrap.prepare(s.store, s.settings)
    yield


async def _metrics_ctx(app: web.Application) -> AsyncIterator[None]:
    s = app[SERVICES]
    await asyncio.to_thread(s.metrics.start)
    s.meter.writer = s.metrics
    s.meter.gauges.append(s.engine_gauges)
    yield
    await asyncio.to_thread(s.metrics.close)


async def _engines_ctx(app: web.Application) -> AsyncIterator[None]:
    s = app[SERVICES]
    try:
        await s.import_starter()
    except Exception as exc:
        s.starter_error = f"starter bundle import failed: {exc}"
        log.error("%s", s.starter_error)
    await s.supervisor.start([])
    yield
    await s.supervisor.close()


async def _gateway_ctx(app: web.Application) -> AsyncIterator[None]:
    s = app[SERVICES]
    s.forwarder.start()
    await s.reload()
    s.quotas.seed(await asyncio.wrap_future(s.metrics.query(seed_query(time.time()))))
    s.tasks.spawn(s.watch_changes(), name="watch-changes")
    s.ready = True
    yield
    s.ready = False
    await s.tasks.close()
    await s.forwarder.close()


async def health(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    s = request.app[SERVICES]
    return json_response(s.status(), status=200 if s.is_ready() else 503)


async def metrics(request: web.Request) -> web.Response:
    s = request.app[SERVICES]
    return web.Response(text=s.meter.exposition(),
                        content_type="text/plain", charset="utf-8",
                        headers={"X-Content-Type-Options": "nosniff"})


def build_app(settings: Settings) -> web.Application:
    """The whole appliance as one aiohttp application."""
    services = Services(settings)
    auth = settings.auth.required
    app = web.Application(
        client_max_size=settings.server.max_body_bytes,
        middlewares=[openai_errors, ControlApi.middleware(services.identity.authorize)],
        handler_args={"max_field_size": 16384},
    )
    app[SERVICES] = services
    app[IDENTITY] = services.identity
    GatewayViews(router=services.router, forwarder=services.forwarder,
                 verifier=services.verifier, limiter=services.limiter, meter=services.meter,
                 auth_required=auth, quotas=services.quotas).add_routes(app)
    ControlApi(services).add_routes(app)
    add_registry_routes(app, services)
    add_ui_routes(app, services)
    try:
        from appliance.sim.http import add_routes as add_sim_routes
    except ImportError:  # pragma: no cover - simulator not built in
        pass
    else:
        add_sim_routes(app, lambda: services.store, data_dir=settings.data_path,
                       operations=OPERATIONS)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics)
    app.cleanup_ctx.extend([_state_ctx, _identity_ctx, _metrics_ctx, _engines_ctx, _gateway_ctx])
    add_bundle_routes(app, services)
    add_cluster_routes(app, services, OPERATIONS)  # after _state_ctx: it uses the store
    return app
