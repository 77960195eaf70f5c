"""A minimal audit trail: who did what to which thing, and when (table ``audit_log``).

Callers record inside the transaction that makes the change, so the change and its audit
record commit together or not at all.
"""

from __future__ import annotations

import getpass
import json
import sqlite3
import time
from typing import Any


def cli_actor() -> str:
    """The actor name of a command run by a local user."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli:unknown"


def record(conn: sqlite3.Connection, *, actor: str, action: str, target: str,
           detail: dict[str, Any] | None = None) -> None:
    """Append one audit record (use inside the change's own transaction)."""
    conn.execute("INSERT INTO audit_log (at, actor, action, target, detail) VALUES (?,?,?,?,?)",
                 (time.time(), actor, action, target, json.dumps(detail or {})))
