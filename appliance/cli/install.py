"""`appliance install PLAYBOOK --hosts N1,N2 [--dry-run]`: run a playbook over SSH."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from appliance.cli.common import add_common, csv_list, fail, print_json, print_table, run_with_store
from appliance.settings import Settings
from appliance.store.state import StateStore


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "install", help="run an installer playbook on hosts",
        description="Run a playbook from playbooks/ (preflight, detect, engine-host, "
        "k3s-server, k3s-agent, reset, ...) on hosts in parallel, with a live line per host "
        "and step. --dry-run shows what would change and changes nothing.")
    p.add_argument("playbook", help="playbook name (playbooks/NAME.yaml); `list` lists them")
    p.add_argument("--hosts", default="", help="comma-separated host names")
    p.add_argument("--dry-run", action="store_true", help="show what would change")
    p.add_argument("--var", action="append", default=[], metavar="KEY=VALUE",
                   help="a playbook variable (repeatable)")
    p.add_argument("--model", help="engine-host: the imported model to serve")
    p.add_argument("--route", help="engine-host: gateway model name (default: the model's)")
    p.add_argument("--port", type=int, help="engine-host: port the engine listens on")
    p.add_argument("--bundle", help="k3s-server/k3s-agent: directory with the k3s files")
    p.add_argument("--server", help="k3s-agent: the k3s server host to join")
    add_common(p)
    p.set_defaults(func=install)


def _vars(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--var {item!r} is not KEY=VALUE")
        out[key] = value
    return out


def install(args: argparse.Namespace) -> int:
    try:
        variables = _vars(args.var)
    except ValueError as exc:
        return fail(str(exc), 2)
    hosts = csv_list(args.hosts)

    async def body(store: StateStore, settings: Settings) -> int:
        from appliance.cluster import HostService, list_playbooks

        service = HostService(store, settings.data_path, settings.cluster,
                              advertise_url=f"http://{settings.listen}")
        if args.playbook == "list":
            books = list_playbooks(service.playbooks_dir)
            if args.json:
                print_json([{"name": b.name, "description": b.description} for b in books])
            else:
                print_table(["playbook", "description"],
                            [(b.name, " ".join(b.description.split())[:90]) for b in books])
            return 0
        if not hosts:
            return fail("--hosts is required", 2)

        def echo(event: Any) -> None:
            print(event.line(), file=sys.stderr if args.json else sys.stdout, flush=True)

        try:
            if args.playbook == "engine-host" and not args.dry_run:
                if not args.model or len(hosts) != 1:
                    return fail("engine-host needs --model and exactly one host", 2)
                res = await service.engine_host(hosts[0], args.model, route=args.route,
                                                port=args.port, echo=echo)
                if args.json:
                    print_json(res)
                else:
                    print(f"{res.status}: {res.model} on {res.host} at {res.base_url}, "
                          f"gateway route {res.route!r} -> upstream {res.upstream}"
                          + (f" ({res.error})" if res.error else ""))
                return 0 if res.status == "serving" else 1
            if args.playbook in ("k3s-server", "k3s-agent", "reset"):
                install_id, results = await service.k3s_install(
                    args.playbook, hosts, settings=settings, bundle=args.bundle,
                    server=args.server, dry_run=args.dry_run, echo=echo)
            else:
                install_id, results = await service.run_playbook(
                    args.playbook, hosts, variables=variables, dry_run=args.dry_run, echo=echo)
        finally:
            await service.close()
        if args.json:
            print_json({"install_id": install_id, "hosts": results})
        else:
            print_table(["host", "status", "ok", "changed", "would change", "skipped",
                         "failed", "error"],
                        [(h, r.status, r.counts().get("ok", 0), r.counts().get("changed", 0),
                          r.counts().get("would-change", 0), r.counts().get("skipped", 0),
                          r.counts().get("failed", 0), r.error[:60])
                         for h, r in results.items()])
            print(f"install {install_id}")
        return 0 if all(r.status == "success" for r in results.values()) else 1

    return run_with_store(args, body)
