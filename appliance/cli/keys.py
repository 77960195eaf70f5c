"""`appliance keys`: create, list and revoke API keys (works while the server runs)."""

from __future__ import annotations

import argparse
import time

from appliance.cli.common import add_common, csv_list, print_json, print_table, run_with_store
from appliance.gateway import keys as keys_api
from appliance.identity.audit import cli_actor
from appliance.settings import Settings
from appliance.store.state import StateStore


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("keys", help="manage API keys",
                       description="Create, list and revoke API keys. Changes apply to a "
                       "running server within a second.")
    ks = p.add_subparsers(dest="keys_command", metavar="ACTION", required=True)

    c = ks.add_parser("create", help="create a key (the secret is printed once)",
                      description="Create an API key and print its secret once.")
    add_common(c)
    c.add_argument("--name", required=True, help="what the key is for")
    c.add_argument("--project", default="default", help="project the key belongs to")
    c.add_argument("--models", help="comma-separated models the key may use (default: all)")
    c.add_argument("--rpm", type=int, help="requests per minute")
    c.add_argument("--tpm", type=int, help="tokens per minute")
    c.add_argument("--expires-in", type=float, metavar="DAYS", help="expire after DAYS days")
    c.add_argument("--admin", action="store_true", help="may also call the control API /api")
    c.add_argument("--allowed-ips", metavar="NETS",
                   help="comma-separated addresses or networks the key may be used from")
    c.add_argument("--tokens-per-day", type=int, help="token budget per UTC day")
    c.add_argument("--tokens-per-month", type=int, help="token budget per UTC month")
    c.set_defaults(func=create)

    ro = ks.add_parser("rotate", help="give a key a new secret (printed once)",
                       description="Replace a key's secret; the old one stops working at once.")
    add_common(ro)
    ro.add_argument("id", help="key id (key_...)")
    ro.set_defaults(func=rotate)

    ls = ks.add_parser("list", help="list keys", description="List API keys (no secrets).")
    add_common(ls)
    ls.add_argument("--all", action="store_true", help="include revoked keys")
    ls.set_defaults(func=list_)

    rv = ks.add_parser("revoke", help="revoke a key", description="Revoke an API key by id.")
    add_common(rv)
    rv.add_argument("id", help="key id (key_...)")
    rv.set_defaults(func=revoke)


def create(args: argparse.Namespace) -> int:
    async def body(store: StateStore, settings: Settings) -> int:
        expires = time.time() + args.expires_in * 86400 if args.expires_in else None
        created = await keys_api.create_key(
            store, name=args.name, project_id=args.project, models=csv_list(args.models),
            rpm=args.rpm, tpm=args.tpm, role="admin" if args.admin else "inference",
            expires_at=expires, allowed_ips=csv_list(args.allowed_ips),
            tokens_per_day=args.tokens_per_day, tokens_per_month=args.tokens_per_month,
            actor=cli_actor())
        if args.json:
            print_json(created)
        else:
            print(f"created {created.id}; the secret is shown only this once:\n{created.key}")
        return 0
    return run_with_store(args, body)


def list_(args: argparse.Namespace) -> int:
    async def body(store: StateStore, settings: Settings) -> int:
        found = await keys_api.list_keys(store, include_revoked=args.all)
        if args.json:
            print_json(found)
            return 0
        print_table(["id", "name", "project", "role", "models", "rpm", "tpm", "state"], [
            (k.id, k.name, k.project_id, k.role, ",".join(k.models) or "all", k.rpm, k.tpm,
             "active" if k.active else "revoked") for k in found])
        return 0
    return run_with_store(args, body)


def revoke(args: argparse.Namespace) -> int:
    async def body(store: StateStore, settings: Settings) -> int:
        key = await keys_api.revoke_key(store, args.id, actor=cli_actor())
        if args.json:
            print_json(key)
        else:
            print(f"revoked {key.id} ({key.name})")
        return 0
    return run_with_store(args, body)


def rotate(args: argparse.Namespace) -> int:
    async def body(store: StateStore, settings: Settings) -> int:
        created = await keys_api.rotate_key(store, args.id, actor=cli_actor())
        if args.json:
            print_json(created)
        else:
            print(f"rotated {created.id}; the new secret is shown only this once:\n"
                  f"{created.key}")
        return 0
    return run_with_store(args, body)
