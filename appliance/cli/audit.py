"""`appliance audit`: list, verify and export the hash-chained audit trail."""

from __future__ import annotations

import argparse
import itertools
import sqlite3
import sys
import time
from pathlib import Path

from appliance.cli.common import (
    add_common,
    fail,
    print_json,
    print_table,
    run_with_store,
    settings_from,
)
from appliance.identity import audit
from appliance.identity.audit_head import load_head
from appliance.kernel.errors import ConfigError
from appliance.settings import Settings
from appliance.store.state import STATE_FILE, StateStore


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("audit", help="read and verify the audit trail",
                       description="The audit trail records every state change and sign-in; "
                       "entries are hash-chained with signed checkpoints.")
    au = p.add_subparsers(dest="audit_command", metavar="ACTION", required=True)

    ls = au.add_parser("list", help="list entries, newest first",
                       description="List audit entries, newest first.")
    add_common(ls)
    ls.add_argument("--actor")
    ls.add_argument("--action", help="action or prefix (auth., key., user. ...)")
    ls.add_argument("--target")
    ls.add_argument("--outcome", choices=["success", "failure"])
    ls.add_argument("--limit", type=int, default=50)
    ls.set_defaults(func=list_)

    v = au.add_parser("verify", help="check the hash chain, checkpoints and signed head",
                      description="Exit 0 when the chain, its checkpoints and the signed head "
                      "(audit-head.json, which shows entries deleted from the end) agree; "
                      "otherwise name the first broken entry and exit 1. Creates the head of a "
                      "data dir that has none (and says so). With --export FILE, verify an "
                      "export offline.")
    add_common(v)
    v.add_argument("--export", type=Path, metavar="FILE",
                   help="verify an `audit export` file instead of the data dir")
    v.add_argument("--saved-head", type=Path, metavar="FILE",
                   help="a copy of audit-head.json kept off the appliance earlier: the trail "
                   "must still hold the entry it names (shows an older head file put back)")
    v.set_defaults(func=verify)

    ex = au.add_parser("export", help="write JSON lines for an auditor",
                       description="Write the entries, the checkpoints, the signed head and "
                       "the public key as JSON lines (to --out or standard output).")
    add_common(ex, json_flag=False)
    ex.add_argument("--out", type=Path, metavar="FILE")
    ex.set_defaults(func=export)


def _data_dir(args: argparse.Namespace) -> Path:
    return settings_from(args).data_path


def _open(args: argparse.Namespace) -> sqlite3.Connection:
    path = _data_dir(args) / STATE_FILE
    if not path.exists():
        raise ConfigError(f"no state database at {path}")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    return conn


def list_(args: argparse.Namespace) -> int:
    async def body(store: StateStore, settings: Settings) -> int:
        entries = await audit.list_entries(store, actor=args.actor, action=args.action,
                                           target=args.target, outcome=args.outcome,
                                           limit=args.limit)
        if args.json:
            print_json(entries)
            return 0
        print_table(["id", "time", "actor", "action", "target", "from", "outcome"], [
            (e.id, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.at)), e.actor,
             e.action, e.target, e.source_address, e.outcome) for e in entries])
        return 0
    return run_with_store(args, body)


def verify(args: argparse.Namespace) -> int:
    try:
        saved = None if args.saved_head is None else load_head(args.saved_head)
        if args.export is not None:
            with args.export.open() as fh:
                result = audit.verify_export(fh, saved_head=saved)
        else:
            conn = _open(args)
            try:
                result = audit.verify_sync(conn, _data_dir(args), saved_head=saved)
            finally:
                conn.close()
    except (ConfigError, OSError, ValueError) as exc:
        return fail(str(exc), 2)
    if args.json:
        print_json(result)
    elif result.ok:
        head = "" if result.head is None else f", signed head at entry {result.head}"
        print(f"audit trail intact: {result.entries} entries, {result.checkpoints} signed "
              f"checkpoints{head}")
        if result.note:
            print(f"note: {result.note}")
    else:
        print(f"audit trail BROKEN at entry {result.first_broken_id}: {result.reason}",
              file=sys.stderr)
    return 0 if result.ok else 1


def export(args: argparse.Namespace) -> int:
    try:
        conn = _open(args)
    except ConfigError as exc:
        return fail(exc.message, 2)
    try:
        lines = audit.export_lines(conn, _data_dir(args))
        first = next(lines, None)  # reads the head: an unreadable one fails before any output
        out = args.out.open("w") if args.out else sys.stdout
        try:
            for line in itertools.chain([first] if first else [], lines):
                out.write(line + "\n")
        finally:
            if args.out:
                out.close()
    except ValueError as exc:
        return fail(str(exc), 2)
    finally:
        conn.close()
    return 0
