"""Routes and upstreams: which targets serve a client-visible model name, in what order.

Upstreams and routes come from the config file (source ``config``) and from the API/CLI
(source ``api``); both live in the state database so a running server picks up CLI changes.
"""

from __future__ import annotations

import enum
import random
import time
from collections.abc import Callable, Iterable

import msgspec
import yarl

from appliance.gateway.upstream_client import build_head
from appliance.identity import audit
from appliance.identity.secrets import SecretBox
from appliance.kernel.errors import BadRequest, NotFound
from appliance.settings import NAME_RE, GatewaySettings, Settings
from appliance.store.state import StateStore

LOCAL_PREFIX = "local:"
UPSTREAM_KEY_PURPOSE = "upstreams.api_key"


class UpstreamRecord(msgspec.Struct, kw_only=True):
    name: str
    kind: str = "openai"
    base_url: str
    api_key: str = ""
    connect_timeout_s: float | None = None
    first_byte_timeout_s: float | None = None
    total_timeout_s: float | None = None
    source: str = "api"


class RouteRecord(msgspec.Struct, kw_only=True):
    model: str
    targets: list[str] = []
    strategy: str = "least_outstanding"
    weights: list[float] = []
    fallback: list[str] = []
    source: str = "api"


# --- persistence ----------------------------------------------------------------------------

_enc = msgspec.json.encode
_dec = msgspec.json.decode


def check_upstream(rec: UpstreamRecord) -> None:
    """Raise BadRequest when an upstream record cannot be used."""
    if not NAME_RE.match(rec.name) or ":" in rec.name:
        raise BadRequest(f"upstream name {rec.name!r} must match {NAME_RE.pattern}", param="name")
    if rec.kind not in ("openai", "anthropic"):
        raise BadRequest("kind must be 'openai' or 'anthropic'", param="kind")
    if not rec.base_url.startswith(("http://", "https://")):
        raise BadRequest("base_url must be an http(s) URL", param="base_url")


def check_route(rec: RouteRecord, upstream_names: Iterable[str]) -> None:
    """Raise BadRequest when a route names unknown upstreams or is inconsistent."""
    names = set(upstream_names)
    if not rec.model.strip():
        raise BadRequest("a route needs a model name", param="model")
    for target in rec.targets:
        head = target.split(":", 1)[0]
        if not target.startswith(LOCAL_PREFIX) and head not in names:
            raise BadRequest(f"target {target!r} names no upstream", param="targets")
    if rec.strategy not in ("least_outstanding", "weighted"):
        raise BadRequest("strategy must be 'least_outstanding' or 'weighted'", param="strategy")
    if rec.weights and len(rec.weights) != len(rec.targets):
        raise BadRequest("weights must match targets one to one", param="weights")
    if not rec.targets and not rec.fallback:
        raise BadRequest("a route needs targets or a fallback", param="targets")


async def list_upstreams(store: StateStore) -> list[UpstreamRecord]:
    """Upstreams with their API keys decrypted (for the router; never shown in responses)."""
    rows = await store.fetchall("SELECT * FROM upstreams ORDER BY name")
    keys = await SecretBox(store.data_dir).open_async([r["api_key"] for r in rows],
                                                      UPSTREAM_KEY_PURPOSE)
    out = []
    for row, api_key in zip(rows, keys, strict=True):
        options = _dec(row["options"])
        out.append(UpstreamRecord(name=row["name"], kind=row["kind"], base_url=row["base_url"],
                                  api_key=api_key, source=row["source"], **options))
    return out


async def put_upstream(store: StateStore, rec: UpstreamRecord, *, actor: str = "system",
                       source_address: str = "") -> None:
    """Create or replace an upstream; its API key is stored encrypted (identity.secrets)."""
    check_upstream(rec)
    options = {k: getattr(rec, k) for k in
               ("connect_timeout_s", "first_byte_timeout_s", "total_timeout_s")
               if getattr(rec, k) is not None}
    box = SecretBox(store.data_dir)
    old = await store.fetchone("SELECT kind, base_url, api_key, options, source FROM upstreams"
                               " WHERE name=?", (rec.name,))
    if old is not None:
        same_key = (await box.open_async([old["api_key"]], UPSTREAM_KEY_PURPOSE))[0] == \
            rec.api_key
        if same_key and (old["kind"], old["base_url"], _dec(old["options"]), old["source"]) \
                == (rec.kind, rec.base_url, options, rec.source):
            return  # unchanged: no write, no audit entry (config sync on every start)
    sealed = await box.seal_async(rec.api_key, UPSTREAM_KEY_PURPOSE)
    async with store.transaction() as conn:
        await conn.execute(
            "INSERT INTO upstreams (name, kind, base_url, api_key, options, source, updated_at)"
            " VALUES (?,?,?,?,?,?,?) ON CONFLICT(name) DO UPDATE SET kind=excluded.kind,"
            " base_url=excluded.base_url, api_key=excluded.api_key, options=excluded.options,"
            " source=excluded.source, updated_at=excluded.updated_at",
            (rec.name, rec.kind, rec.base_url, sealed, _enc(options).decode(), rec.source,
             time.time()))
        await audit.record_async(
            conn, actor=actor, action="upstream.put", target=rec.name,
            detail={"kind": rec.kind, "base_url": rec.base_url, "source": rec.source,
                    "has_api_key": bool(rec.api_key), **options},
            source_address=source_address, data_dir=store.data_dir)


async def remove_upstream(store: StateStore, name: str, *, actor: str = "system",
                          source_address: str = "") -> None:
    for route in await list_routes(store):
        if any(t.split(":", 1)[0] == name for t in route.targets):
            raise BadRequest(f"upstream {name!r} is used by route {route.model!r}; "
                             "remove or change the route first", param="name")
    async with store.transaction() as conn:
        cur = await conn.execute("DELETE FROM upstreams WHERE name=?", (name,))
        if cur.rowcount == 0:
            raise NotFound(f"no upstream {name!r}", param="name")
        await audit.record_async(conn, actor=actor, action="upstream.remove", target=name,
                                 source_address=source_address, data_dir=store.data_dir)


async def list_routes(store: StateStore) -> list[RouteRecord]:
    rows = await store.fetchall("SELECT * FROM routes ORDER BY model")
    return [RouteRecord(model=r["model"], targets=_dec(r["targets"]), strategy=r["strategy"],
                        weights=_dec(r["weights"]), fallback=_dec(r["fallback"]),
                        source=r["source"]) for r in rows]


async def put_route(store: StateStore, rec: RouteRecord, *, actor: str = "system",
                    source_address: str = "") -> None:
    """Create or replace a route (audited when it changes)."""
    names = [r["name"] for r in await store.fetchall("SELECT name FROM upstreams")]
    check_route(rec, names)
    values = (_enc(rec.targets).decode(), rec.strategy, _enc(rec.weights).decode(),
              _enc(rec.fallback).decode(), rec.source)
    old = await store.fetchone("SELECT targets, strategy, weights, fallback, source FROM routes"
                               " WHERE model=?", (rec.model,))
    if old is not None and tuple(old) == values:
        return  # unchanged: no write, no audit entry (config sync on every start)
    async with store.transaction() as conn:
        await conn.execute(
            "INSERT INTO routes (model, targets, strategy, weights, fallback, source,"
            " updated_at) VALUES (?,?,?,?,?,?,?) ON CONFLICT(model) DO UPDATE SET"
            " targets=excluded.targets, strategy=excluded.strategy, weights=excluded.weights,"
            " fallback=excluded.fallback, source=excluded.source,"
            " updated_at=excluded.updated_at",
            (rec.model, *values, time.time()))
        await audit.record_async(
            conn, actor=actor, action="route.put", target=rec.model,
            detail={"targets": rec.targets, "strategy": rec.strategy,
                    "fallback": rec.fallback, "source": rec.source},
            source_address=source_address, data_dir=store.data_dir)


async def remove_route(store: StateStore, model: str, *, actor: str = "system",
                       source_address: str = "") -> None:
    async with store.transaction() as conn:
        cur = await conn.execute("DELETE FROM routes WHERE model=?", (model,))
        if cur.rowcount == 0:
            raise NotFound(f"no route for model {model!r}", param="model")
        await audit.record_async(conn, actor=actor, action="route.remove", target=model,
                                 source_address=source_address, data_dir=store.data_dir)


async def sync_config(store: StateStore, settings: Settings) -> None:
    """Make the state's config-sourced upstreams and routes equal to the config file's."""
    for up in settings.upstreams:
        await put_upstream(store, UpstreamRecord(
            name=up.name, kind=up.kind, base_url=up.base_url, api_key=up.resolved_api_key(),
            connect_timeout_s=up.connect_timeout_s, first_byte_timeout_s=up.first_byte_timeout_s,
            total_timeout_s=up.total_timeout_s, source="config"), actor="config")
    for route in settings.routes:
        await put_route(store, RouteRecord(
            model=route.model, targets=list(route.targets), strategy=route.strategy,
            weights=list(route.weights), fallback=list(route.fallback), source="config"),
            actor="config")
    keep_routes = [r.model for r in settings.routes]
    keep_ups = [u.name for u in settings.upstreams]
    await store.execute(
        f"DELETE FROM routes WHERE source='config' AND model NOT IN "
        f"({','.join('?' * len(keep_routes))})", keep_routes)
    await store.execute(
        f"DELETE FROM upstreams WHERE source='config' AND name NOT IN "
        f"({','.join('?' * len(keep_ups))})", keep_ups)


# --- live routing ---------------------------------------------------------------------------


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Breaker:
    """Opens after N consecutive failures; after ``reset_s`` lets one probe request through."""

    def __init__(self, failures: int, reset_s: float) -> None:
        self.threshold = failures
        self.reset_s = reset_s
        self.failures = 0
        self.opened_at = 0.0
        self.state = BreakerState.CLOSED

    def allow(self) -> bool:
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN and time.monotonic() - self.opened_at >= self.reset_s:
            self.state = BreakerState.HALF_OPEN
            return True
        return False

    def success(self) -> None:
        self.failures = 0
        self.state = BreakerState.CLOSED

    def failure(self) -> None:
        self.failures += 1
        if self.state is BreakerState.HALF_OPEN or self.failures >= self.threshold:
            self.state = BreakerState.OPEN
            self.opened_at = time.monotonic()


class Target:
    """One place a request can be sent: an upstream (optionally with its own model name)."""

    def __init__(self, name: str, *, kind: str, url: Callable[[], str | None],
                 api_key: Callable[[], str],
                 upstream_model: str | None, connect_s: float, first_byte_s: float,
                 total_s: float, breaker: Breaker,
                 upstream: UpstreamRecord | None = None) -> None:
        self.name = name
        self.upstream = upstream
        self.kind = kind
        self._url = url
        self._api_key = api_key
        self.upstream_model = upstream_model
        self.connect_s = connect_s
        self.first_byte_s = first_byte_s
        self.total_s = total_s
        self.breaker = breaker
        self.in_flight = 0
        self._heads: dict[tuple[str, str, str, str], tuple[yarl.URL, bytes]] = {}

    def request_head(self, suffix: str, content_type: str,
                     headers: Callable[[Target, str], dict[str, str]]
                     ) -> tuple[yarl.URL, bytes]:
        """URL and request head for ``suffix``, built once per (URL, key, content type).

        A local engine's URL and key change when it restarts, so both are part of the key.
        """
        base = self._url()
        if base is None:
            raise LookupError(f"target {self.name} is not available")
        key = (base, self.api_key, suffix, content_type)
        found = self._heads.get(key)
        if found is None:
            if len(self._heads) > 64:
                self._heads.clear()
            url = yarl.URL(base.rstrip("/") + suffix)
            found = self._heads[key] = (url, build_head(url, headers(self, content_type)))
        return found

    @property
    def base_url(self) -> str | None:
        return self._url()

    @property
    def api_key(self) -> str:
        return self._api_key()

    @property
    def available(self) -> bool:
        return self.base_url is not None


class RoutePlan(msgspec.Struct):
    """The ordered candidates for one request: (model the target serves, route name, targets)."""

    steps: list[tuple[str, list[Target]]]


class LocalEngines:
    """What the router needs to know about local engines (kept abstract to avoid a cycle)."""

    def names(self) -> list[str]:  # pragma: no cover - interface
        raise NotImplementedError

    def base_url(self, name: str) -> str | None:  # pragma: no cover - interface
        raise NotImplementedError

    def token(self, name: str) -> str:  # pragma: no cover - interface
        raise NotImplementedError


class Router:
    """The live routing table. ``load`` swaps it atomically; target state survives reloads."""

    def __init__(self, settings: GatewaySettings, engines: LocalEngines) -> None:
        self.settings = settings
        self.engines = engines
        self.upstreams: dict[str, UpstreamRecord] = {}
        self.routes: dict[str, RouteRecord] = {}
        self._targets: dict[str, Target] = {}

    def load(self, upstreams: list[UpstreamRecord], routes: list[RouteRecord]) -> None:
        self.upstreams = {u.name: u for u in upstreams}
        self.routes = {r.model: r for r in routes}
        # drop targets whose upstream changed so they pick up the new URL, key and timeouts
        self._targets = {k: t for k, t in self._targets.items()
                         if t.upstream is None or self.upstreams.get(t.upstream.name) == t.upstream}

    def models(self) -> list[str]:
        """Every client-visible model name: routes and local engines."""
        return sorted(set(self.routes) | set(self.engines.names()))

    def target(self, spec: str) -> Target:
        """The Target for ``upstream[:model]`` or ``local:model``, created on first use."""
        found = self._targets.get(spec)
        if found is not None:
            return found
        gw = self.settings
        breaker = Breaker(gw.breaker_failures, gw.breaker_reset_s)
        if spec.startswith(LOCAL_PREFIX):
            name = spec[len(LOCAL_PREFIX):]
            target = Target(spec, kind="openai", url=lambda: self.engines.base_url(name),
                            api_key=lambda: self.engines.token(name), upstream_model=None,
                            connect_s=gw.connect_timeout_s, first_byte_s=gw.first_byte_timeout_s,
                            total_s=gw.total_timeout_s, breaker=breaker)
        else:
            up_name, _, model = spec.partition(":")
            up = self.upstreams[up_name]
            target = Target(
                spec, kind=up.kind, url=lambda: up.base_url, api_key=lambda: up.api_key,
                upstream_model=model or None,
                connect_s=up.connect_timeout_s or gw.connect_timeout_s,
                first_byte_s=up.first_byte_timeout_s or gw.first_byte_timeout_s,
                total_s=up.total_timeout_s or gw.total_timeout_s, breaker=breaker, upstream=up)
        self._targets[spec] = target
        return target

    def all_targets(self) -> list[Target]:
        return list(self._targets.values())

    def plan(self, model: str) -> RoutePlan:
        """Candidates for ``model`` in order: its route's targets, then each fallback's."""
        steps: list[tuple[str, list[Target]]] = []
        self._expand(model, steps, seen=set())
        if not steps:
            raise NotFound(f"The model `{model}` does not exist or you do not have access to it.",
                           param="model", code="model_not_found")
        return RoutePlan(steps)

    def _expand(self, model: str, steps: list[tuple[str, list[Target]]], seen: set[str]) -> None:
        if model in seen:
            return
        seen.add(model)
        route = self.routes.get(model)
        if route is not None:
            targets = [self.target(t) for t in route.targets if self._known(t)]
            if targets:
                steps.append((model, self._order(targets, route)))
            for fallback in route.fallback:
                self._expand(fallback, steps, seen)
        elif model in self.engines.names():
            steps.append((model, [self.target(LOCAL_PREFIX + model)]))

    def _known(self, spec: str) -> bool:
        if spec.startswith(LOCAL_PREFIX):
            return spec[len(LOCAL_PREFIX):] in self.engines.names()
        return spec.split(":", 1)[0] in self.upstreams

    @staticmethod
    def _order(targets: list[Target], route: RouteRecord) -> list[Target]:
        if len(targets) == 1:
            return targets
        if route.strategy == "weighted" and route.weights:
            weights = dict(zip(route.targets, route.weights, strict=False))
            # weighted random permutation (Efraimidis-Spirakis keys)
            return sorted(targets, key=lambda t: -random.random() ** (
                1.0 / max(weights.get(t.name, 1.0), 1e-9)))
        return sorted(targets, key=lambda t: (t.in_flight, random.random()))
