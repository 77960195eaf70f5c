"""`appliance routes` and upstreams: map model names to targets (works while serving)."""

from __future__ import annotations

import argparse

from appliance.cli.common import add_common, csv_list, print_json, print_table, run_with_store
from appliance.gateway import routing
from appliance.identity.audit import cli_actor
from appliance.settings import Settings
from appliance.store.state import StateStore


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("routes", help="manage routes and upstreams",
                       description="Routes map a client-visible model name to upstream targets, "
                       "with fallback models. Changes apply to a running server at once.")
    rs = p.add_subparsers(dest="routes_command", metavar="ACTION", required=True)

    ls = rs.add_parser("list", help="list routes", description="List routes.")
    add_common(ls)
    ls.set_defaults(func=list_routes)

    add = rs.add_parser("add", help="add or replace a route",
                        description="Add or replace a route. Targets are upstream names, "
                        "optionally UPSTREAM:MODEL to send another model name upstream, or "
                        "local:MODEL for a local engine.")
    add_common(add)
    add.add_argument("model", help="model name clients ask for")
    add.add_argument("--targets", default="", help="comma-separated targets")
    add.add_argument("--fallback", default="", help="comma-separated fallback models")
    add.add_argument("--strategy", choices=["least_outstanding", "weighted"],
                     default="least_outstanding")
    add.add_argument("--weights", default="", help="comma-separated weights, one per target")
    add.set_defaults(func=add_route)

    rm = rs.add_parser("remove", help="remove a route", description="Remove a route.")
    add_common(rm)
    rm.add_argument("model")
    rm.set_defaults(func=remove_route)

    ul = rs.add_parser("upstreams", help="list upstreams", description="List upstreams.")
    add_common(ul)
    ul.set_defaults(func=list_upstreams)

    ua = rs.add_parser("add-upstream", help="add or replace an upstream",
                       description="Add or replace an upstream engine or provider.")
    add_common(ua)
    ua.add_argument("name")
    ua.add_argument("--base-url", required=True, help="e.g. http://10.0.0.5:8000/v1")
    ua.add_argument("--kind", choices=["openai", "anthropic"], default="openai")
    ua.add_argument("--api-key", default="", help="key the upstream expects")
    ua.set_defaults(func=add_upstream)

    ur = rs.add_parser("remove-upstream", help="remove an upstream",
                       description="Remove an upstream that no route uses.")
    add_common(ur)
    ur.add_argument("name")
    ur.set_defaults(func=remove_upstream)


def list_routes(args: argparse.Namespace) -> int:
    async def body(store: StateStore, settings: Settings) -> int:
        found = await routing.list_routes(store)
        if args.json:
            print_json(found)
        else:
            print_table(["model", "targets", "fallback", "strategy", "source"], [
                (r.model, ",".join(r.targets), ",".join(r.fallback), r.strategy, r.source)
                for r in found])
        return 0
    return run_with_store(args, body)


def add_route(args: argparse.Namespace) -> int:
    async def body(store: StateStore, settings: Settings) -> int:
        weights = [float(w) for w in csv_list(args.weights)]
        rec = routing.RouteRecord(model=args.model, targets=csv_list(args.targets),
                                  fallback=csv_list(args.fallback), strategy=args.strategy,
                                  weights=weights)
        await routing.put_route(store, rec, actor=cli_actor())
        print_json(rec) if args.json else print(f"route {args.model} saved")
        return 0
    return run_with_store(args, body)


def remove_route(args: argparse.Namespace) -> int:
    async def body(store: StateStore, settings: Settings) -> int:
        await routing.remove_route(store, args.model, actor=cli_actor())
        print_json({"removed": args.model}) if args.json else print(
            f"route {args.model} removed")
        return 0
    return run_with_store(args, body)


def list_upstreams(args: argparse.Namespace) -> int:
    async def body(store: StateStore, settings: Settings) -> int:
        found = await routing.list_upstreams(store)
        for up in found:
            up.api_key = "set" if up.api_key else ""
        if args.json:
            print_json(found)
        else:
            print_table(["name", "kind", "base_url", "api_key", "source"],
                        [(u.name, u.kind, u.base_url, u.api_key, u.source) for u in found])
        return 0
    return run_with_store(args, body)


def add_upstream(args: argparse.Namespace) -> int:
    async def body(store: StateStore, settings: Settings) -> int:
        await routing.put_upstream(store, routing.UpstreamRecord(
            name=args.name, kind=args.kind, base_url=args.base_url, api_key=args.api_key),
            actor=cli_actor())
        print_json({"name": args.name}) if args.json else print(f"upstream {args.name} saved")
        return 0
    return run_with_store(args, body)


def remove_upstream(args: argparse.Namespace) -> int:
    async def body(store: StateStore, settings: Settings) -> int:
        await routing.remove_upstream(store, args.name, actor=cli_actor())
        print_json({"removed": args.name}) if args.json else print(
            f"upstream {args.name} removed")
        return 0
    return run_with_store(args, body)
