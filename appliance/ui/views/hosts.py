"""Hosts: the inventory, host keys, preflight and hardware facts, playbook runs with progress.

The page reads the inventory from the state store; every change (add, accept a key, remove,
check, run a playbook) goes through ``/ui/api`` to ``/api/hosts`` and ``/api/installs``, so
the operator's permissions and the audit trail apply. Progress streams from
``/api/installs/{id}/events``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
from aiohttp import web

from appliance.cluster import inventory
from appliance.cluster.facts import node_labels
from appliance.cluster.inventory import ROLES, Host
from appliance.cluster.playbook import default_playbooks_dir, list_playbooks
from appliance.kernel.errors import NotFound
from appliance.ui.pages import Page, PageRequest, can

# Offered on the page, in this order; anything else in playbooks/ follows.
PLAYBOOK_ORDER = ("preflight", "detect", "engine-host", "k3s-server", "k3s-agent", "reset")


def key_state(host: Host) -> dict[str, str]:
    """The host key's state as a badge: accepted, waiting for the operator, or unknown."""
    if host.host_key_fingerprint and host.offered_fingerprint:
        return {"state": "bad", "text": "changed", "fingerprint": host.offered_fingerprint,
                "accepted": host.host_key_fingerprint}
    if host.host_key_fingerprint:
        return {"state": "ok", "text": "accepted", "fingerprint": host.host_key_fingerprint}
    if host.offered_fingerprint:
        return {"state": "warn", "text": "to accept", "fingerprint": host.offered_fingerprint}
    return {"state": "plain", "text": "not fetched", "fingerprint": ""}


def gpu_summary(facts: dict[str, Any]) -> list[dict[str, Any]]:
    """Detected accelerators grouped by simulator catalog id (or name when unmapped)."""
    groups: dict[str, dict[str, Any]] = {}
    for gpu in facts.get("gpus") or []:
        key = gpu.get("catalog_id") or gpu.get("name") or "unknown"
        g = groups.setdefault(key, {"catalog_id": gpu.get("catalog_id"),
                                    "name": gpu.get("name") or "", "vendor": gpu.get("vendor"),
                                    "memory_mib": gpu.get("memory_mib"), "count": 0})
        g["count"] += 1
    return list(groups.values())


async def last_runs(store: Any, playbook: str, limit: int = 200) -> dict[str, dict[str, Any]]:
    """The newest run of ``playbook`` per host: status, error, counts, when."""
    rows = await store.fetchall(
        "SELECT id, hosts, status, summary, error, created_at, finished_at FROM installs"
        " WHERE playbook=? AND dry_run=0 ORDER BY created_at DESC LIMIT ?", (playbook, limit))
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        summary = msgspec.json.decode(r["summary"] or "{}")
        for host in msgspec.json.decode(r["hosts"]):
            if host in out:
                continue
            per = summary.get(host) or {}
            status = per.get("status") or r["status"]
            out[host] = {"id": r["id"], "status": "ok" if status == "success" else status,
                         "error": per.get("error") or "", "counts": per.get("counts") or {},
                         "at": r["finished_at"] or r["created_at"]}
    return out


async def playbooks(req: PageRequest) -> list[dict[str, Any]]:
    """Playbooks on this appliance, in the page's order, with the variables they need."""
    from appliance.cluster.http import CLUSTER_VIEWS

    views = req.request.app.get(CLUSTER_VIEWS)
    folder = (views.hosts.playbooks_dir if views is not None and views.hosts is not None
              else default_playbooks_dir())
    try:
        books = await asyncio.to_thread(list_playbooks, folder)
    except Exception:  # a broken playbook must not take the page down
        return [{"name": n, "description": "", "requires": []} for n in PLAYBOOK_ORDER]
    rank = {n: i for i, n in enumerate(PLAYBOOK_ORDER)}
    books = sorted(books, key=lambda b: (rank.get(b.name, len(rank)), b.name))
    return [{"name": b.name, "description": " ".join(b.description.split()),
             "requires": list(b.requires)} for b in books]


async def hosts(req: PageRequest) -> dict[str, Any]:
    """The inventory with key state, last preflight and detected accelerators."""
    if not can(req.operator, "hosts.read"):
        return {"allowed": False, "can_write": False}
    store = req.services.store
    found = await inventory.list_hosts(store)
    return {"allowed": True, "can_write": can(req.operator, "hosts.write"),
            "hosts": found, "keys": {h.name: key_state(h) for h in found},
            "gpus": {h.name: gpu_summary(h.facts) for h in found},
            "preflight": await last_runs(store, "preflight"),
            "playbooks": await playbooks(req), "roles": ROLES}


def _mib(v: Any) -> str:
    if not isinstance(v, (int, float)) or v <= 0:
        return "—"
    return f"{v / 1024:,.1f} GiB" if v >= 1024 else f"{v:,.0f} MiB"


async def host_detail(req: PageRequest) -> dict[str, Any]:
    """One host: its settings, key, hardware facts and recent runs."""
    name = req.request.match_info["name"]
    if not can(req.operator, "hosts.read"):
        return {"allowed": False, "can_write": False, "title": name}
    store = req.services.store
    try:
        host = await inventory.get_host(store, name)
    except NotFound:
        raise web.HTTPNotFound(text=f"no host {name!r} in the inventory") from None
    rows = await store.fetchall(
        "SELECT id, playbook, hosts, dry_run, status, summary, error, created_at, finished_at"
        " FROM installs ORDER BY created_at DESC LIMIT 500")
    runs = []
    for r in rows:
        if name not in msgspec.json.decode(r["hosts"]):
            continue
        per = msgspec.json.decode(r["summary"] or "{}").get(name) or {}
        runs.append({"id": r["id"], "playbook": r["playbook"], "dry_run": bool(r["dry_run"]),
                     "status": per.get("status") or r["status"],
                     "error": per.get("error") or r["error"], "counts": per.get("counts") or {},
                     "at": r["created_at"], "took": ((r["finished_at"] or time.time())
                                                     - r["created_at"])})
        if len(runs) >= 20:
            break
    facts = host.facts
    return {"allowed": True, "can_write": can(req.operator, "hosts.write"), "host": host,
            "title": f"Host {host.name}", "nav_path": "/hosts", "key": key_state(host),
            "facts": facts, **shaped_facts(facts), "node_labels": node_labels(facts),
            "runs": runs, "mib": _mib}


def _with(defaults: dict[str, Any], found: Any) -> dict[str, Any]:
    return {**defaults, **(found if isinstance(found, dict) else {})}


def shaped_facts(facts: dict[str, Any]) -> dict[str, Any]:
    """The facts with every key the page shows present (older or partial facts lack some)."""
    pf = facts.get("preflight")
    return {
        "pf": _with({"os": "unknown", "kernel": "", "hostname": "", "hostname_resolves": False,
                     "cpus": 0, "memory_mib": 0, "memory_available_mib": 0, "swap_mib": 0,
                     "disk_free_mib": {}, "listening_ports": [], "init": "unknown",
                     "systemd": False, "container_runtimes": []}, pf) if pf else None,
        "clock": _with({"skew_s": None, "uncertainty_s": None}, facts.get("clock")),
        "cpu": _with({"model": "", "architecture": "", "cpus": 0, "sockets": 0,
                      "cores_per_socket": 0, "threads_per_core": 0}, facts.get("cpu")),
        "has_cpu": bool(facts.get("cpu") or facts.get("memory")),
        "mem": _with({"total_mib": 0, "available_mib": 0, "hugepages_total": 0},
                     facts.get("memory")),
        "numa": _with({"nodes": 0, "cpus": {}}, facts.get("numa")),
        "acc": (_with({"count": 0, "catalog_id": None, "name": "", "notes": []},
                      facts["accelerator"]) if facts.get("accelerator") else None),
        "gpus": [_with({"index": i, "vendor": "", "name": "", "memory_mib": None, "driver": "",
                        "compute_capability": "", "pci_bus_id": "", "slot": "", "pci_id": "",
                        "catalog_id": None, "source": "lspci"}, g)
                 for i, g in enumerate(facts.get("gpus") or [])],
        "nics": [_with({"name": "", "state": "", "speed_mbps": None, "addresses": [], "mac": "",
                        "rdma": False}, n) for n in facts.get("nics") or []],
        "disks": [_with({"name": "", "size_gib": 0, "rotational": False, "model": "",
                         "transport": ""}, d) for d in facts.get("disks") or []],
    }


PAGES = (
    Page("/hosts", "Hosts", "hosts.html", hosts, section="Infrastructure",
         permission="hosts.read",
         summary="Machines the appliance prepares over SSH: keys, preflight, hardware, "
                 "playbooks."),
    Page("/hosts/{name}", "Host", "host.html", host_detail, section="Infrastructure",
         nav=False, permission="hosts.read"),
)
