"""First start and every start: seal legacy audit rows and publish the audit head, create the
admin account."""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import sys

from appliance.identity import audit, audit_head, secrets, users
from appliance.settings import Settings
from appliance.store.state import STATE_FILE, StateStore

log = logging.getLogger(__name__)
ADMIN_PASSWORD_ENV = "APPLIANCE_ADMIN_PASSWORD"


def _seal(store: StateStore) -> int:
    conn = sqlite3.connect(store.data_dir / STATE_FILE, isolation_level=None, timeout=10)
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            sealed = audit.seal(conn)
            # secrets written before encryption existed (or by an older version)
            secrets.seal_plaintext(conn, secrets.Keyring.load(store.data_dir))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    finally:
        conn.close()
    # the signed head: created for a data dir from before it, caught up after a crash between
    # a commit and its head update (it never moves onto a log that disagrees with it)
    try:
        audit_head.publish_head(store.data_dir)
    except (OSError, ValueError):
        # serving goes on; `appliance audit verify` shows what is wrong with the trail
        log.exception("could not update the signed audit head")
    return sealed


async def prepare(store: StateStore, settings: Settings) -> None:
    """Seal audit rows written before the chain existed; create ``admin`` on first start.

    The generated one-time password goes to the console (stderr) only, never to the log
    file; ``APPLIANCE_ADMIN_PASSWORD`` supplies one for unattended installs instead.
    """
    sealed = await asyncio.to_thread(_seal, store)
    if sealed:
        log.info("sealed %d audit entries written before the hash chain", sealed)
    username = settings.identity.admin_username
    generated = await users.ensure_admin(store, username=username,
                                         password=os.environ.get(ADMIN_PASSWORD_ENV) or None)
    if generated is not None:
        log.warning("created the first account %r; its one-time password is on the console",
                    username)
        print(f"\n  First start: created user {username!r} with the one-time password\n\n"
              f"      {generated}\n\n  Sign in and change it (it is shown only this once).\n",
              file=sys.stderr, flush=True)
