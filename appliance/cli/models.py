"""`appliance models`: what models this appliance has."""

from __future__ import annotations

import argparse
import json

from appliance.cli.common import add_common, print_json, print_table, run_with_store
from appliance.kernel.errors import NotFound
from appliance.models.registry import list_models
from appliance.settings import Settings
from appliance.store.state import StateStore


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("models", help="list and inspect imported models",
                       description="Models imported from bundles, every version.")
    ms = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    ls = ms.add_parser("list", help="list models", description="List imported models.")
    add_common(ls)
    ls.set_defaults(func=list_)
    sh = ms.add_parser("show", help="metadata, licence, scans and versions of a model",
                       description="Everything the registry knows about one model: header "
                       "metadata (GGUF, safetensors, config.json), the licence and its summary, "
                       "security scan results, and every version.")
    add_common(sh)
    sh.add_argument("name", help="model name")
    sh.set_defaults(func=show)


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


def show(args: argparse.Namespace) -> int:
    async def body(store: StateStore, settings: Settings) -> int:
        rows = await store.fetchall(
            "SELECT id, name, version, task, format, size, active, created_at, bundle_id,"
            " metadata, licence, scan FROM models WHERE name=? ORDER BY created_at",
            (args.name,))
        if not rows:
            raise NotFound(f"no model named {args.name!r}; see `appliance models list`")
        versions = [{**{k: r[k] for k in ("id", "version", "task", "format", "size",
                                          "created_at", "bundle_id")},
                     "active": bool(r["active"]), "metadata": json.loads(r["metadata"]),
                     "licence": json.loads(r["licence"]), "scan": json.loads(r["scan"])}
                    for r in rows]
        current = next((v for v in versions if v["active"]), versions[-1])
        if args.json:
            print_json({"name": args.name, "active": current, "versions": versions})
            return 0
        meta, lic, scan = current["metadata"], current["licence"], current["scan"]
        print(f"model {args.name} {current['version']} ({current['task']}, "
              f"{current['format']}, {current['size'] / 1e6:.1f} MB)")
        for key in ("architecture", "parameter_count", "context_length", "quantization",
                    "tensor_count"):
            if key in meta:
                print(f"  {key.replace('_', ' ')}: {meta[key]}")
        if meta.get("chat_template"):
            print(f"  chat template: {len(meta['chat_template'])} characters")
        for rel, info in meta.get("safetensors", {}).items():
            print(f"  {rel}: {info['tensor_count']} tensors, dtypes {info['dtypes']}")
        if lic:
            terms = ", ".join(f"{k.replace('_', ' ')}: {'yes' if lic[k] else 'no'}"
                              for k in ("commercial_use", "redistribution", "attribution")
                              if k in lic)
            print(f"  licence: {lic.get('name', lic.get('id'))} ({terms or 'unknown terms'})")
            print(f"    {lic.get('summary', '')}")
        if scan:
            clam = scan.get("clamav", {})
            print(f"  scan: {scan.get('status')} (pickle: {scan.get('pickle', {}).get('status')},"
                  f" clamav: {clam.get('status')})")
            for finding in scan.get("pickle", {}).get("findings", []):
                print(f"    {finding['severity']}: {finding['file']} imports {finding['import']}")
        print("  versions: " + ", ".join(
            v["version"] + (" (active)" if v["active"] else "") for v in versions))
        return 0
    return run_with_store(args, body)
