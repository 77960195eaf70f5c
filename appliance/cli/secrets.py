"""`appliance secrets`: the master key that encrypts secrets at rest."""

from __future__ import annotations

import argparse
import sys

from appliance.cli.common import add_common, fail, print_json, settings_from
from appliance.identity import secrets
from appliance.kernel.errors import ApplianceError
from appliance.store.state import open_sync


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("secrets", help="manage the master key of secrets at rest",
                       description="Secrets (upstream API keys ...) are encrypted with "
                       "AES-256-GCM under per-secret data keys wrapped by a master key.")
    ss = p.add_subparsers(dest="secrets_command", metavar="ACTION", required=True)
    r = ss.add_parser("rotate-master", help="new master key; re-wrap every data key",
                      description="Create a new master key and re-wrap every data key under "
                      "it (database columns and the engine hosts' token files); works while "
                      "the server runs.")
    add_common(r)
    r.set_defaults(func=rotate)


def rotate(args: argparse.Namespace) -> int:
    try:
        data_dir = settings_from(args).data_path
        conn = open_sync(data_dir)
        try:
            done = secrets.rotate_master(conn, data_dir)
        finally:
            conn.close()
    except ApplianceError as exc:
        return fail(exc.message, 1)
    if args.json:
        print_json(done)
    else:
        print(f"master key {done.old_key} replaced by {done.new_key}; {done.rewrapped} "
              f"secret(s) re-wrapped, {done.files} of them in files")
    for name in done.unreadable_files:
        print(f"appliance: warning: {name} does not open under any master key held; left as "
              "it is (an engine token: remove the file and run engine-host again)",
              file=sys.stderr)
    return 0
