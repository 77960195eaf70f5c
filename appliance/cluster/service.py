"""The hosts side of the cluster component: inventory, host keys, installs, engine hosts.

``HostService`` is what the HTTP views and the CLI call; it knows nothing of aiohttp. It owns
the SSH connection pool and the installs running in this process (their progress logs are
what ``/api/installs/{id}/events`` streams).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

from appliance.cluster import inventory
from appliance.cluster.events import (
    FINAL_RUN_STATES,
    ProgressEvent,
    ProgressLog,
    follow_stored,
    store_events,
)
from appliance.cluster.inventory import Host, HostInput
from appliance.cluster.playbook import Playbook, default_playbooks_dir, load_playbook
from appliance.cluster.runner import HostResult, PlaybookRunner, get_install, new_install_id
from appliance.cluster.ssh import (
    HostKeyChanged,
    HostKeyUnknown,
    SshOptions,
    SshPool,
    fingerprint,
    key_text,
)
from appliance.engines.supervisor import self_command
from appliance.gateway import routing
from appliance.kernel.errors import ApplianceError, BadRequest, NotFound
from appliance.models.registry import list_models
from appliance.settings import ClusterSettings
from appliance.store.state import StateStore

log = logging.getLogger(__name__)


class AddHostResult(msgspec.Struct, kw_only=True):
    host: Host
    fingerprint: str | None  # the key the host offered
    accepted: bool
    message: str


class EngineHostResult(msgspec.Struct, kw_only=True):
    install_id: str
    host: str
    model: str
    upstream: str
    route: str
    base_url: str
    status: str
    error: str = ""


class HostService:
    """Hosts, keys and playbook runs over one state store."""

    def __init__(self, store: StateStore, data_dir: Path, settings: ClusterSettings, *,
                 advertise_url: str = "", blob_path: Callable[[str], Path] | None = None) -> None:
        self.store = store
        self.data_dir = data_dir
        self.settings = settings
        self.pool = SshPool(SshOptions(
            connect_limit=settings.connect_limit, channels_per_host=settings.channels_per_host,
            connect_timeout_s=settings.connect_timeout_s,
            command_timeout_s=settings.command_timeout_s, keepalive_s=settings.keepalive_s),
            on_offered_key=self._offered_key)
        self.playbooks_dir = (Path(settings.playbooks_dir).expanduser()
                              if settings.playbooks_dir else default_playbooks_dir())
        self.advertise_url = settings.advertise_url or advertise_url
        self.blob_path = blob_path or (lambda digest: data_dir / "blobs" / digest)
        self.live: dict[str, ProgressLog] = {}
        self._tasks: dict[str, asyncio.Task[Any]] = {}
        self._route_lock = asyncio.Lock()  # read-modify-write of routes
        # identity.secrets creates the master key on first use without a lock: two first
        # seals at once can race (reported); seal one at a time here
        self._seal_lock = asyncio.Lock()

    async def _offered_key(self, name: str, key: str, fp: str) -> None:
        with contextlib.suppress(ApplianceError):
            await inventory.record_offered_key(self.store, name, key, fp)

    # --- inventory ---------------------------------------------------------------------------

    async def add_host(self, host: HostInput, *, accept_host_key: bool = False,
                       expected_fingerprint: str | None = None,
                       replace: bool = False) -> AddHostResult:
        """Record a host, then fetch the key it offers: accept it when told to (or when it
        matches ``expected_fingerprint``), otherwise show it for the operator to accept."""
        async with self._seal_lock:
            saved = await inventory.add_host(self.store, self.data_dir, host, replace=replace)
        try:
            jump = None
            if host.jump_host:
                from appliance.cluster.runner import host_target

                jump = await host_target(self.store, self.data_dir, host.jump_host)
            offered = await self.pool.scan_key(host.address, host.port, jump=jump)
        except ApplianceError as exc:
            return AddHostResult(host=saved, fingerprint=None, accepted=False,
                                 message=f"host saved, but its key could not be fetched: "
                                 f"{exc.message}")
        fp = fingerprint(offered)
        current = await inventory.host_key(self.store, host.name)
        if current.public_key and current.fingerprint == fp:
            return AddHostResult(host=await inventory.get_host(self.store, host.name),
                                 fingerprint=fp, accepted=True, message="host key unchanged")
        if current.public_key and current.fingerprint != fp:
            await inventory.record_offered_key(self.store, host.name, key_text(offered), fp)
            raise HostKeyChanged(
                f"HOST KEY CHANGED for {host.name}: accepted {current.fingerprint}, offered "
                f"{fp}; refusing. Accept the new key explicitly with `appliance hosts "
                f"accept-key {host.name} --fingerprint {fp}` once you have checked the host.",
                host=host.name, expected=current.fingerprint or "", offered=fp)
        if expected_fingerprint and expected_fingerprint != fp:
            await inventory.record_offered_key(self.store, host.name, key_text(offered), fp)
            raise HostKeyChanged(f"{host.name} offered {fp}, not the expected "
                                 f"{expected_fingerprint}; refusing", host=host.name,
                                 expected=expected_fingerprint, offered=fp)
        if accept_host_key or expected_fingerprint:
            await inventory.accept_host_key(self.store, host.name, key_text(offered), fp)
            return AddHostResult(host=await inventory.get_host(self.store, host.name),
                                 fingerprint=fp, accepted=True,
                                 message=f"host key {fp} ({offered.get_algorithm()}) accepted")
        await inventory.record_offered_key(self.store, host.name, key_text(offered), fp)
        return AddHostResult(
            host=await inventory.get_host(self.store, host.name), fingerprint=fp,
            accepted=False,
            message=f"host offers key {fp} ({offered.get_algorithm()}); check it on the host "
            f"(`ssh-keygen -lf /etc/ssh/ssh_host_{offered.get_algorithm().split('-')[-1]}"
            f"_key.pub`) and accept it with `appliance hosts accept-key {host.name} "
            f"--fingerprint {fp}` or add the host again with --accept-host-key")

    async def accept_key(self, name: str, fp: str) -> Host:
        """Accept the key ``name`` last offered, when its fingerprint is ``fp``."""
        current = await inventory.host_key(self.store, name)
        if current.offered_key is None or current.offered_fingerprint != fp:
            # nothing recorded (or another key): look again
            host = await inventory.get_host(self.store, name)
            offered = await self.pool.scan_key(host.address, host.port)
            if fingerprint(offered) != fp:
                raise BadRequest(f"{name} offers {fingerprint(offered)}, not {fp}",
                                 param="fingerprint")
            await inventory.accept_host_key(self.store, name, key_text(offered), fp)
        else:
            await inventory.accept_host_key(self.store, name, current.offered_key, fp)
        await self.pool.drop(name)
        return await inventory.get_host(self.store, name)

    async def remove_host(self, name: str) -> None:
        await self.pool.drop(name)
        await inventory.remove_host(self.store, name)

    # --- playbook runs -------------------------------------------------------------------------

    def runner(self) -> PlaybookRunner:
        return PlaybookRunner(store=self.store, data_dir=self.data_dir, pool=self.pool,
                              playbooks_dir=self.playbooks_dir,
                              appliance_vars={"url": self.advertise_url,
                                              "registry": _host_of(self.advertise_url)})

    def playbook(self, name: str) -> Playbook:
        return load_playbook(name, self.playbooks_dir)

    async def run_playbook(self, name: str, hosts: list[str], *,
                           variables: dict[str, Any] | None = None,
                           host_vars: dict[str, dict[str, Any]] | None = None,
                           dry_run: bool = False, install_id: str | None = None,
                           echo: Callable[[ProgressEvent], None] | None = None,
                           ) -> tuple[str, dict[str, HostResult]]:
        """Run a playbook to the end (CLI, tests); progress also goes to ``echo``."""
        book = self.playbook(name)
        install_id = install_id or new_install_id()
        progress = ProgressLog(install_id, persist=self._persist, echo=echo)
        self.live[install_id] = progress
        try:
            return await self.runner().run(book, hosts, install_id=install_id,
                                           variables=variables, host_vars=host_vars,
                                           dry_run=dry_run, progress=progress)
        finally:
            self.live.pop(install_id, None)

    async def start_install(self, name: str, hosts: list[str], *,
                            variables: dict[str, Any] | None = None,
                            dry_run: bool = False) -> str:
        """Start a run in the background (API); follow it with ``events``."""
        book = self.playbook(name)  # fail now on an unknown playbook
        for h in hosts:
            await inventory.get_host(self.store, h)
        install_id = new_install_id()
        progress = ProgressLog(install_id, persist=self._persist)
        self.live[install_id] = progress

        async def job() -> None:
            try:
                await self.runner().run(book, hosts, install_id=install_id,
                                        variables=variables, dry_run=dry_run,
                                        progress=progress)
            except Exception:
                log.exception("install %s failed", install_id)
            finally:
                self._tasks.pop(install_id, None)
                await asyncio.sleep(30)  # late SSE subscribers still find the live log
                self.live.pop(install_id, None)

        self._tasks[install_id] = asyncio.get_running_loop().create_task(
            job(), name=f"install-{install_id}")
        # the row exists before the caller gets the id
        for _ in range(100):
            if await self.store.fetchone("SELECT 1 FROM installs WHERE id=?", (install_id,)):
                break
            await asyncio.sleep(0.01)
        return install_id

    async def _persist(self, stream: str, events: list[ProgressEvent]) -> None:
        await store_events(self.store, stream, events)

    async def events(self, install_id: str) -> Any:
        """The install's events as an async iterator: live ones here, else from the store."""
        live = self.live.get(install_id)
        if live is not None:
            return live.follow()
        await get_install(self.store, install_id)

        async def final() -> bool:
            return (await get_install(self.store, install_id)).status in FINAL_RUN_STATES

        return follow_stored(self.store, install_id, final)

    async def check_host(self, name: str, *,
                         echo: Callable[[ProgressEvent], None] | None = None) -> dict[str, Any]:
        """Preflight then detect on one host; the facts and each check's outcome."""
        checks: list[dict[str, Any]] = []
        errors: list[str] = []
        for book in ("preflight", "detect"):
            _, results = await self.run_playbook(book, [name], echo=echo)
            res = results[name]
            checks += [{"playbook": book, "step": s.step, "status": s.status,
                        "message": s.message} for s in res.steps]
            if res.status != "success":
                errors.append(f"{book}: {res.error}")
                break
        host = await inventory.get_host(self.store, name)
        return {"host": name, "ok": not errors, "errors": errors, "checks": checks,
                "facts": host.facts}

    # --- k3s -----------------------------------------------------------------------------------

    async def k3s_install(self, playbook: str, hosts: list[str], *, settings: Any,
                          bundle: str | None, server: str | None = None,
                          dry_run: bool = False,
                          echo: Callable[[ProgressEvent], None] | None = None,
                          ) -> tuple[str, dict[str, HostResult]]:
        """k3s-server, k3s-agent or reset: bundle files, registry mirrors, labels from facts;
        an agent's join token is read from ``server`` over SSH."""
        from appliance.cluster.k3s import host_vars_for, k3s_vars, read_token_command

        token = None
        if playbook == "k3s-agent" and server and not dry_run:
            session = await self.session(server)
            token = (await session.run(read_token_command(), check=True)).stdout.strip()
        elif playbook == "k3s-agent":
            token = "(read from the server when not a dry run)"
        variables = await k3s_vars(self.store, settings, playbook, hosts, bundle=bundle,
                                   server=server, token=token)
        host_vars = await host_vars_for(self.store, hosts) if playbook != "reset" else {}
        return await self.run_playbook(playbook, hosts, variables=variables,
                                       host_vars=host_vars, dry_run=dry_run, echo=echo)

    async def session(self, name: str) -> Any:
        """A logged-in SSH session to inventory host ``name``."""
        from appliance.cluster.runner import host_target

        return await self.pool.session(await host_target(self.store, self.data_dir, name))

    # --- engine hosts --------------------------------------------------------------------------

    async def engine_host(self, host_name: str, model_name: str, *, route: str | None = None,
                          port: int | None = None, threads: int = 0,
                          context_tokens: int = 2048,
                          echo: Callable[[ProgressEvent], None] | None = None,
                          install_id: str | None = None) -> EngineHostResult:
        """Serve an imported model from a host and route ``route`` (default: the model's name
        on this host) to it through the gateway, next to the route's other targets."""
        host = await inventory.get_host(self.store, host_name)
        models = [m for m in await list_models(self.store, active_only=True)
                  if m.name == model_name]
        if not models:
            raise NotFound(f"no active model {model_name!r}", param="model")
        model = models[-1]
        port = port or self.settings.engine_port
        token = await self._engine_token(host_name, model.name)
        install_dir = "/opt/foundry-appliance"
        files = [{"rel": rel, "src": str(self.blob_path(digest)),
                  "dest": f"{install_dir}/models/{model.name}/{rel}", "sha256": digest}
                 for rel, digest in sorted(model.files.items())]
        frozen = bool(getattr(sys, "frozen", False))
        command = list(self.settings.engine_command) or (
            [f"{install_dir}/bin/appliance"] if frozen else self_command())
        variables = {
            "install_dir": install_dir,
            "model": {"name": model.name, "task": model.task, "files": files},
            "engine": {"kind": "appliance", "command": command, "args": [],
                       "binary_src": sys.executable if frozen else "",
                       "port": port, "bind": "0.0.0.0", "token": token, "threads": threads,
                       "context_tokens": context_tokens,
                       "ready_timeout_s": int(self.settings.engine_ready_timeout_s)},
        }
        install_id, results = await self.run_playbook(
            "engine-host", [host_name], variables=variables, echo=echo, install_id=install_id)
        res = results[host_name]
        upstream = f"engine-{host_name}"[:63]
        base_url = f"http://{_url_host(host.address)}:{port}/v1"
        route = route or model.name
        if res.status != "success":
            return EngineHostResult(install_id=install_id, host=host_name, model=model.name,
                                    upstream=upstream, route=route, base_url=base_url,
                                    status="failed", error=res.error)
        await routing.put_upstream(self.store, routing.UpstreamRecord(
            name=upstream, base_url=base_url, api_key=token,
            connect_timeout_s=self.settings.engine_connect_timeout_s,
            first_byte_timeout_s=self.settings.engine_first_byte_timeout_s))
        await self.add_route_target(route, f"{upstream}:{model.name}")
        await self.wait_serving(base_url, token, model.name)
        return EngineHostResult(install_id=install_id, host=host_name, model=model.name,
                                upstream=upstream, route=route, base_url=base_url,
                                status="serving")

    async def add_route_target(self, route: str, target: str) -> None:
        """Add ``target`` to route ``route`` (created when missing), keeping its others."""
        async with self._route_lock:
            await self._add_route_target(route, target)

    async def _add_route_target(self, route: str, target: str) -> None:
        existing = {r.model: r for r in await routing.list_routes(self.store)}
        current = existing.get(route)
        targets = list(current.targets) if current else []
        if target not in targets:
            targets.append(target)
        await routing.put_route(self.store, routing.RouteRecord(
            model=route, targets=targets, fallback=list(current.fallback) if current else [],
            strategy=current.strategy if current else "least_outstanding",
            weights=[] if current is None or len(current.weights) != len(targets)
            else list(current.weights)))

    async def _engine_token(self, host: str, model: str) -> str:
        """The bearer token of an engine host: kept (sealed) so re-runs stay idempotent."""
        from appliance.cluster.secrets import (
            ENGINE_TOKEN,
            ENGINE_TOKEN_DIR,
            seal,
            unseal,
            write_sealed_file,
        )

        # the upstream's API key is this token (sealed by the gateway's routing table)
        for up in await routing.list_upstreams(self.store):
            if up.name == f"engine-{host}"[:63] and up.api_key:
                return up.api_key
        # a file per host and model, re-wrapped by `appliance secrets rotate-master`
        path = self.data_dir / ENGINE_TOKEN_DIR / f"{host}--{model}"
        if await asyncio.to_thread(path.exists):
            return await unseal(self.data_dir, await asyncio.to_thread(path.read_text),
                                purpose=ENGINE_TOKEN)
        token = secrets.token_urlsafe(32)
        sealed = await seal(self.data_dir, token, purpose=ENGINE_TOKEN)
        await asyncio.to_thread(write_sealed_file, path, sealed)
        return token

    async def wait_serving(self, base_url: str, token: str, model: str, *,
                           within_s: float = 30.0) -> None:
        """Until the engine answers /v1/models over the network from the appliance."""
        deadline = time.monotonic() + within_s
        last = ""
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            while time.monotonic() < deadline:
                try:
                    async with http.get(f"{base_url}/models",
                                        headers={"Authorization": f"Bearer {token}"}) as resp:
                        if resp.status == 200:
                            return
                        last = f"HTTP {resp.status}"
                except (TimeoutError, aiohttp.ClientError) as exc:
                    last = str(exc) or type(exc).__name__
                await asyncio.sleep(0.5)
        raise ApplianceError(f"engine at {base_url} does not answer: {last}",
                             code="engine_unreachable")

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.pool.close()


def _host_of(url: str) -> str:
    if "://" not in url:
        return url
    return url.split("://", 1)[1].split("/", 1)[0]


def _url_host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


__all__ = ["AddHostResult", "EngineHostResult", "HostKeyChanged", "HostKeyUnknown",
           "HostService"]
