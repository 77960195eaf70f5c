"""`appliance models`: what models this appliance has."""

from __future__ import annotations

import argparse

from appliance.cli.common import add_common, print_json, print_table, run_with_store
from appliance.models.registry import list_models
from appliance.settings import Settings
from appliance.store.state import StateStore


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("models", help="list imported models",
                       description="Models imported from bundles, every version.")
    ms = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    ls = ms.add_parser("list", help="list models", description="List imported models.")
    add_common(ls)
    ls.set_defaults(func=list_)


def list_(args: argparse.Namespace) -> int:
    async def body(store: StateStore, settings: Settings) -> int:
        found = await list_models(store)
        if args.json:
            print_json(found)
        else:
            print_table(["name", "version", "task", "format", "size", "active"], [
                (m.name, m.version, m.task, m.format, f"{m.size / 1e6:.1f} MB",
                 "yes" if m.active else "no") for m in found])
        return 0
    return run_with_store(args, body)
