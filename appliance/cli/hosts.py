"""`appliance hosts`: the host inventory (add, list, remove, check, accept-key)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from appliance.cli.common import add_common, fail, print_json, print_table, run_with_store
from appliance.settings import Settings
from appliance.store.state import StateStore


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("hosts", help="manage the hosts the appliance installs onto",
                       description="The host inventory: SSH address and credentials (stored "
                       "encrypted), role and labels, the accepted host key, detected facts.")
    hs = p.add_subparsers(dest="hosts_command", metavar="ACTION", required=True)

    add = hs.add_parser("add", help="add a host", description="Add (or with --replace, change) "
                        "a host. Its SSH host key is fetched and shown; --accept-host-key "
                        "trusts it on this first contact.")
    add_common(add)
    add.add_argument("--name", required=True, help="inventory name (a DNS label)")
    add.add_argument("--address", required=True, help="IP address or host name")
    add.add_argument("--port", type=int, default=22)
    add.add_argument("--user", default="root", help="login user (sudo is used when not root)")
    add.add_argument("--key-file", type=Path, metavar="PATH", help="SSH private key file")
    add.add_argument("--password-env", metavar="VAR",
                     help="read the login password from this environment variable")
    add.add_argument("--jump-host", metavar="NAME", help="reach the host through this host")
    add.add_argument("--role", choices=["server", "agent", "gpu"], default="gpu")
    add.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    add.add_argument("--accept-host-key", action="store_true",
                     help="trust the key the host offers now (shown in the output)")
    add.add_argument("--host-key-fingerprint", metavar="SHA256:...",
                     help="trust the offered key only when it has this fingerprint")
    add.add_argument("--replace", action="store_true", help="replace a host of the same name")
    add.set_defaults(func=add_host)

    ls = hs.add_parser("list", help="list hosts", description="List hosts.")
    add_common(ls)
    ls.set_defaults(func=list_hosts)

    rm = hs.add_parser("remove", help="remove a host", description="Remove a host.")
    add_common(rm)
    rm.add_argument("name")
    rm.set_defaults(func=remove_host)

    ck = hs.add_parser("check", help="run preflight and detect on a host, print its facts",
                       description="Run the preflight and detect playbooks on one host and "
                       "print the checks and the hardware facts.")
    ck.add_argument("name")
    add_common(ck)
    ck.set_defaults(func=check_host)

    ak = hs.add_parser("accept-key", help="accept the host key a host offers",
                       description="Trust the key the host offers, given its fingerprint "
                       "(as shown by `hosts add` or in a refused connection).")
    ak.add_argument("name")
    ak.add_argument("--fingerprint", required=True, metavar="SHA256:...")
    add_common(ak)
    ak.set_defaults(func=accept_key)


def _service(store: StateStore, settings: Settings) -> Any:
    from appliance.cluster import HostService

    return HostService(store, settings.data_path, settings.cluster,
                       advertise_url=f"http://{settings.listen}")


def _labels(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"label {item!r} is not KEY=VALUE")
        out[key] = value
    return out


def add_host(args: argparse.Namespace) -> int:
    from appliance.cluster import HostInput

    if bool(args.key_file) == bool(args.password_env):
        return fail("give --key-file or --password-env (one of them)", 2)
    try:
        private_key = args.key_file.read_text() if args.key_file else ""
    except OSError as exc:
        return fail(f"cannot read {args.key_file}: {exc}", 2)
    password = os.environ.get(args.password_env, "") if args.password_env else ""
    if args.password_env and not password:
        return fail(f"${args.password_env} is empty or not set", 2)
    try:
        labels = _labels(args.label)
    except ValueError as exc:
        return fail(str(exc), 2)

    async def body(store: StateStore, settings: Settings) -> int:
        service = _service(store, settings)
        try:
            result = await service.add_host(
                HostInput(name=args.name, address=args.address, port=args.port, user=args.user,
                          private_key=private_key, password=password,
                          jump_host=args.jump_host, role=args.role, labels=labels),
                accept_host_key=args.accept_host_key,
                expected_fingerprint=args.host_key_fingerprint, replace=args.replace)
        finally:
            await service.close()
        if args.json:
            print_json({"host": result.host, "fingerprint": result.fingerprint,
                        "accepted": result.accepted, "message": result.message})
        else:
            print(f"host {result.host.name} ({result.host.user}@{result.host.address}:"
                  f"{result.host.port}) saved")
            print(result.message)
        return 0

    return run_with_store(args, body)


def list_hosts(args: argparse.Namespace) -> int:
    from appliance.cluster import inventory

    async def body(store: StateStore, settings: Settings) -> int:
        hosts = await inventory.list_hosts(store)
        if args.json:
            print_json(hosts)
            return 0
        rows = []
        for h in hosts:
            acc = h.facts.get("accelerator") or {}
            gpus = f"{acc.get('count')}x {acc.get('catalog_id') or acc.get('name')}" \
                if acc else ("none" if h.facts_at else "")
            key = h.host_key_fingerprint or ("OFFERED " + h.offered_fingerprint
                                             if h.offered_fingerprint else "")
            rows.append((h.name, f"{h.user}@{h.address}:{h.port}", h.role, gpus,
                         key[:30], ",".join(f"{k}={v}" for k, v in h.labels.items())))
        print_table(["name", "ssh", "role", "gpus", "host key", "labels"], rows)
        return 0

    return run_with_store(args, body)


def remove_host(args: argparse.Namespace) -> int:
    async def body(store: StateStore, settings: Settings) -> int:
        service = _service(store, settings)
        try:
            await service.remove_host(args.name)
        finally:
            await service.close()
        if args.json:
            print_json({"removed": args.name})
        else:
            print(f"host {args.name} removed")
        return 0

    return run_with_store(args, body)


def accept_key(args: argparse.Namespace) -> int:
    async def body(store: StateStore, settings: Settings) -> int:
        service = _service(store, settings)
        try:
            host = await service.accept_key(args.name, args.fingerprint)
        finally:
            await service.close()
        if args.json:
            print_json(host)
        else:
            print(f"host key {host.host_key_fingerprint} of {host.name} accepted")
        return 0

    return run_with_store(args, body)


def check_host(args: argparse.Namespace) -> int:
    async def body(store: StateStore, settings: Settings) -> int:
        service = _service(store, settings)
        echo = None if args.json else (
            lambda e: print(e.line(), file=sys.stderr, flush=True))
        try:
            report = await service.check_host(args.name, echo=echo)
        finally:
            await service.close()
        if args.json:
            print_json(report)
        else:
            _print_facts(report)
        return 0 if report["ok"] else 1

    return run_with_store(args, body)


def _print_facts(report: dict[str, Any]) -> None:
    facts = report["facts"]
    print(f"\nhost {report['host']}: {'ok' if report['ok'] else 'FAILED'}")
    for err in report["errors"]:
        print(f"  error: {err}")
    print_table(["check", "status", "detail"],
                [(c["step"], c["status"], c["message"][:90]) for c in report["checks"]
                 if c["playbook"] == "preflight" and c["step"] != "gather"])
    pre = facts.get("preflight") or {}
    cpu = facts.get("cpu") or {}
    mem = facts.get("memory") or {}
    acc = facts.get("accelerator")
    print()
    print(f"os:           {pre.get('os', '?')} ({pre.get('kernel', '?')})")
    flags = " ".join(f for f, on in (("AVX-512", cpu.get("avx512")), ("AMX", cpu.get("amx")))
                     if on)
    print(f"cpu:          {cpu.get('model', '?')} x{cpu.get('sockets', '?')} sockets, "
          f"{cpu.get('cpus', '?')} CPUs {flags}".rstrip())
    print(f"memory:       {mem.get('total_mib', '?')} MiB, NUMA nodes "
          f"{(facts.get('numa') or {}).get('nodes', '?')}")
    if acc:
        print(f"accelerators: {acc['count']} x {acc['name']} -> catalog "
              f"{acc.get('catalog_id') or 'unknown'}")
        for note in acc.get("notes") or []:
            print(f"              {note}")
    else:
        print("accelerators: none")
    for nic in facts.get("nics") or []:
        speed = f"{nic['speed_mbps']} Mb/s" if nic.get("speed_mbps") else "-"
        print(f"nic:          {nic['name']} {speed} {' '.join(nic.get('addresses', []))}")
    for disk in facts.get("disks") or []:
        kind = "HDD" if disk.get("rotational") else "SSD"
        print(f"disk:         {disk['name']} {disk['size_gib']} GiB {kind} {disk.get('model')}")
