"""The hash-chained audit trail: what is recorded, and verify catches every kind of tampering."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from appliance.identity import audit, audit_head
from appliance.identity.audit_head import HEAD_FILE, publish_head
from appliance.store.state import open_sync, transaction_sync
from tests.conftest import appliance_cmd
from tests.identity.conftest import ADMIN_PASSWORD, services, sign_in


def _fill(data_dir: Path, n: int) -> None:
    conn = open_sync(data_dir)
    for i in range(n):
        conn.execute("BEGIN IMMEDIATE")
        audit.record(conn, actor=f"user:u{i}", action="test.change", target=f"t{i}",
                     detail={"i": i, "password": "hunter2"}, source_address="127.0.0.1")
        conn.execute("COMMIT")
    conn.close()
    # one head update for the lot (a writer's own transaction updates it after each commit)
    publish_head(data_dir, since=0)


def _sql(data_dir: Path, *statements: str) -> None:
    conn = sqlite3.connect(data_dir / "state.db", isolation_level=None)
    for statement in statements:
        conn.execute(statement)
    conn.close()


def _head(data_dir: Path) -> dict[str, Any]:
    head: dict[str, Any] = json.loads((data_dir / HEAD_FILE).read_text())
    return head


def _verify(data_dir: Path) -> audit.VerifyResult:
    conn = sqlite3.connect(data_dir / "state.db")
    try:
        return audit.verify_sync(conn, data_dir)
    finally:
        conn.close()


def _cli_verify(data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(appliance_cmd("audit", "verify", "--data-dir", str(data_dir)),
                          capture_output=True, text=True)


def test_intact_chain_with_checkpoints(tmp_path: Path) -> None:
    _fill(tmp_path, 205)
    result = _verify(tmp_path)
    assert result.ok and result.entries == 205 and result.checkpoints == 2
    assert result.head == 205 and result.note == ""
    assert _cli_verify(tmp_path).returncode == 0
    # secrets never reach the trail
    conn = sqlite3.connect(tmp_path / "state.db")
    assert "hunter2" not in json.dumps(conn.execute("SELECT * FROM audit_log").fetchall())


@pytest.mark.parametrize("tamper,broken", [
    ("UPDATE audit_log SET actor='user:nobody' WHERE id=7", 7),
    ("UPDATE audit_log SET detail='{\"i\": 99}' WHERE id=12", 12),
    ("UPDATE audit_log SET outcome='failure' WHERE id=3", 3),
    ("DELETE FROM audit_log WHERE id=5", 6),
    ("UPDATE audit_log SET at = at + 1 WHERE id=1", 1),
    # swap two rows' contents (a reorder)
    ("UPDATE audit_log SET id = CASE id WHEN 8 THEN 9 WHEN 9 THEN 8 END, "
     "target = target WHERE id IN (8, 9)", 8),
    # delete from the end, past the signed checkpoint at entry 100
    ("DELETE FROM audit_log WHERE id >= 95", 95),
])
def test_tampering_is_detected(tmp_path: Path, tamper: str, broken: int) -> None:
    _fill(tmp_path, 130)
    conn = sqlite3.connect(tmp_path / "state.db", isolation_level=None)
    if "CASE id" in tamper:
        conn.execute("UPDATE audit_log SET id = -8 WHERE id = 8")
        conn.execute("UPDATE audit_log SET id = 8 WHERE id = 9")
        conn.execute("UPDATE audit_log SET id = 9 WHERE id = -8")
    else:
        conn.execute(tamper)
    conn.close()
    result = _verify(tmp_path)
    assert not result.ok
    assert result.first_broken_id == broken, result
    cli = _cli_verify(tmp_path)
    assert cli.returncode == 1
    assert f"entry {broken}" in cli.stderr


def test_recomputed_row_is_caught_by_the_next_link(tmp_path: Path) -> None:
    """An attacker who edits a row and fixes its own hash still breaks the next link."""
    _fill(tmp_path, 10)
    conn = sqlite3.connect(tmp_path / "state.db", isolation_level=None)
    row = conn.execute("SELECT id, at, actor, action, target, source_address, outcome, detail,"
                       " prev_hash FROM audit_log WHERE id=4").fetchone()
    new = audit.entry_hash(id=4, at=row[1], actor="user:someone-else", action=row[3],
                           target=row[4], source_address=row[5], outcome=row[6],
                           detail=row[7], prev_hash=row[8])
    conn.execute("UPDATE audit_log SET actor='user:someone-else', hash=? WHERE id=4", (new,))
    conn.close()
    result = _verify(tmp_path)
    assert not result.ok and result.first_broken_id == 5


def test_export_verifies_offline(tmp_path: Path) -> None:
    _fill(tmp_path, 120)
    out = tmp_path / "audit.jsonl"
    subprocess.run(appliance_cmd("audit", "export", "--data-dir", str(tmp_path), "--out",
                                 str(out)), check=True)
    ok = subprocess.run(appliance_cmd("audit", "verify", "--export", str(out)),
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    lines = out.read_text().splitlines()
    assert json.loads(lines[-1])["type"] == "head"
    entry = json.loads(lines[10])
    entry["target"] = "changed"
    lines[10] = json.dumps(entry)
    out.write_text("\n".join(lines) + "\n")
    bad = subprocess.run(appliance_cmd("audit", "verify", "--export", str(out)),
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "entry 10" in bad.stderr


def test_legacy_rows_are_sealed(tmp_path: Path) -> None:
    """Rows of the bundles' early audit table (no hash) join the chain on the next write."""
    conn = open_sync(tmp_path)
    conn.execute("INSERT INTO audit_log (at, actor, action, target, detail) VALUES "
                 "(1.0, 'cli:root', 'bundle.trust_key', 'k1', '{}')")
    conn.execute("BEGIN IMMEDIATE")
    audit.record(conn, actor="cli:root", action="x", target="y")
    conn.execute("COMMIT")
    conn.close()
    result = _verify(tmp_path)
    assert result.ok and result.entries == 2


# --- the signed head: deletions from the end after the last checkpoint -------------------------


@pytest.mark.parametrize("deleted", [1, 10])
def test_truncation_after_the_last_checkpoint_is_detected(tmp_path: Path, deleted: int) -> None:
    _fill(tmp_path, 130)  # checkpoint at 100, entries 101-130 after it
    assert _head(tmp_path)["entry_id"] == 130
    end = 130 - deleted
    # a careful attacker also puts the AUTOINCREMENT counter back; only the head can tell
    _sql(tmp_path, f"DELETE FROM audit_log WHERE id > {end}",
         f"UPDATE sqlite_sequence SET seq={end} WHERE name='audit_log'")
    result = _verify(tmp_path)
    assert not result.ok and result.first_broken_id == end + 1, result
    missing = "entry 130" if deleted == 1 else f"entries {end + 1}-130"
    assert f"{missing} missing" in result.reason and "signed head" in result.reason
    cli = _cli_verify(tmp_path)
    assert cli.returncode == 1 and f"entry {end + 1}" in cli.stderr, cli.stderr
    # later writes do not hide it: the head never moves onto a log that disagrees with it
    for _ in range(deleted + 3):
        audit.write_sync(tmp_path, actor="cli:root", action="test.after", target="x")
    assert _head(tmp_path)["entry_id"] == 130
    result = _verify(tmp_path)
    assert not result.ok and "differs from the signed head" in result.reason, result


def test_older_head_put_back_needs_a_saved_copy(tmp_path: Path) -> None:
    """The residual risk (docs/identity.md): truncation plus an older, validly signed head file
    passes on the appliance alone; a copy of the head kept elsewhere shows it."""
    _fill(tmp_path, 120)
    attackers_copy = (tmp_path / HEAD_FILE).read_bytes()  # head at 120
    for _ in range(10):
        audit.write_sync(tmp_path, actor="cli:root", action="test.later", target="x")
    auditors_copy = tmp_path.parent / f"{tmp_path.name}-saved-head.json"
    auditors_copy.write_bytes((tmp_path / HEAD_FILE).read_bytes())  # head at 130
    _sql(tmp_path, "DELETE FROM audit_log WHERE id > 120",
         "UPDATE sqlite_sequence SET seq=120 WHERE name='audit_log'")
    (tmp_path / HEAD_FILE).write_bytes(attackers_copy)
    assert _verify(tmp_path).ok  # not detectable from the data dir alone
    cli = subprocess.run(appliance_cmd("audit", "verify", "--data-dir", str(tmp_path),
                                       "--saved-head", str(auditors_copy)),
                         capture_output=True, text=True)
    assert cli.returncode == 1, cli.stdout
    assert "entry 121" in cli.stderr and "entries 121-130 missing" in cli.stderr



def test_saved_head_shows_an_older_head_file_put_back(tmp_path: Path) -> None:
    _fill(tmp_path, 30)
    older = (tmp_path / HEAD_FILE).read_bytes()
    audit.write_sync(tmp_path, actor="cli:root", action="test.later", target="x")
    saved = audit_head.load_head(tmp_path / HEAD_FILE)  # at 31
    conn = sqlite3.connect(tmp_path / "state.db")
    try:
        assert audit.verify_sync(conn, tmp_path, saved_head=saved).ok
        (tmp_path / HEAD_FILE).write_bytes(older)  # every row is still there
        result = audit.verify_sync(conn, tmp_path, saved_head=saved)
    finally:
        conn.close()
    assert not result.ok and "an older head file was put back" in result.reason


def test_plain_delete_from_the_end_shows_without_the_head(tmp_path: Path) -> None:
    """The table's AUTOINCREMENT counter still remembers the deleted ids."""
    _fill(tmp_path, 30)
    (tmp_path / HEAD_FILE).unlink()
    _sql(tmp_path, "DELETE FROM audit_log WHERE id > 25")
    result = _verify(tmp_path)
    assert not result.ok and result.first_broken_id == 26
    assert "entries 26-30 are missing" in result.reason
    assert not (tmp_path / HEAD_FILE).exists()  # a broken trail gets no new head


@pytest.mark.parametrize("field,value", [
    ("entry_hash", "0" * 64),
    ("entry_id", 31),
    ("since", 7),
    ("signature", "AAAA"),
])
def test_forged_head_is_detected(tmp_path: Path, field: str, value: Any) -> None:
    _fill(tmp_path, 30)
    head = _head(tmp_path)
    head[field] = value
    (tmp_path / HEAD_FILE).write_text(json.dumps(head))
    result = _verify(tmp_path)
    assert not result.ok and "bad signature" in result.reason, result
    assert _cli_verify(tmp_path).returncode == 1


def test_checkpoint_signature_does_not_pass_as_a_head(tmp_path: Path) -> None:
    """The head's signed message is domain-separated from a checkpoint's ``id:hash``."""
    _fill(tmp_path, 105)
    cp = sqlite3.connect(tmp_path / "state.db").execute(
        "SELECT entry_id, entry_hash, signature FROM audit_checkpoints").fetchone()
    head = _head(tmp_path)
    head.update(entry_id=cp[0], entry_hash=cp[1], signature=cp[2])
    (tmp_path / HEAD_FILE).write_text(json.dumps(head))
    _sql(tmp_path, "DELETE FROM audit_log WHERE id > 100",
         "UPDATE sqlite_sequence SET seq=100 WHERE name='audit_log'")
    result = _verify(tmp_path)
    assert not result.ok and "bad signature" in result.reason


def test_head_from_another_key_or_unreadable_is_reported(tmp_path: Path) -> None:
    _fill(tmp_path, 5)
    other = tmp_path / "other"
    _fill(other, 5)
    (tmp_path / HEAD_FILE).write_bytes((other / HEAD_FILE).read_bytes())
    result = _verify(tmp_path)
    assert not result.ok and "not by this data dir's key" in result.reason
    (tmp_path / HEAD_FILE).write_text("{not json")
    result = _verify(tmp_path)
    assert not result.ok and "unreadable" in result.reason


def test_rolled_back_write_does_not_move_the_head(tmp_path: Path) -> None:
    """The head follows commits only, so a failed change never looks like tampering."""
    _fill(tmp_path, 3)
    conn = open_sync(tmp_path)
    with pytest.raises(RuntimeError), transaction_sync(conn):
        audit.record(conn, actor="cli:root", action="test.change", target="t")
        raise RuntimeError("the change fails after its audit entry")
    conn.close()
    assert _head(tmp_path)["entry_id"] == 3
    result = _verify(tmp_path)
    assert result.ok and result.head == 3 and result.note == ""


def test_fresh_data_dir_verifies_clean(tmp_path: Path) -> None:
    open_sync(tmp_path).close()
    result = _verify(tmp_path)
    assert result.ok and result.entries == 0 and result.head is None and result.note == ""
    cli = _cli_verify(tmp_path)
    assert cli.returncode == 0 and "note:" not in cli.stdout
    audit.write_sync(tmp_path, actor="cli:root", action="test.first", target="x")
    head = _head(tmp_path)
    assert head["entry_id"] == 1 and head["since"] == 0  # covers the trail from its start
    result = _verify(tmp_path)
    assert result.ok and result.head == 1 and result.note == ""


def test_upgraded_data_dir_gets_a_head_with_a_note(tmp_path: Path) -> None:
    """A data dir written before signed heads: not tampered, and it gets one."""
    _fill(tmp_path, 42)
    (tmp_path / HEAD_FILE).unlink()
    cli = _cli_verify(tmp_path)
    assert cli.returncode == 0, cli.stderr
    assert "note: no signed head was found" in cli.stdout
    assert "created it at entry 42" in cli.stdout
    head = _head(tmp_path)
    assert head["entry_id"] == 42 and head["since"] == 42
    result = _verify(tmp_path)
    assert result.ok and result.head == 42 and "(re)created at entry 42" in result.note
    # from here on, deleting from the end shows
    audit.write_sync(tmp_path, actor="cli:root", action="test.after", target="x")
    assert _head(tmp_path)["entry_id"] == 43
    _sql(tmp_path, "DELETE FROM audit_log WHERE id = 43",
         "UPDATE sqlite_sequence SET seq=42 WHERE name='audit_log'")
    assert _cli_verify(tmp_path).returncode == 1


def test_records_committed_by_hand_publish_the_head_at_exit(tmp_path: Path) -> None:
    """A caller's own BEGIN/COMMIT (no after-commit hook) gets its head when the process ends."""
    open_sync(tmp_path).close()
    script = ("import sys\n"
              "from pathlib import Path\n"
              "from appliance.identity import audit\n"
              "from appliance.store.state import open_sync\n"
              "conn = open_sync(Path(sys.argv[1]))\n"
              "conn.execute('BEGIN IMMEDIATE')\n"
              "audit.record(conn, actor='cli:root', action='test.change', target='t')\n"
              "conn.execute('COMMIT')\n")
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True)
    head = _head(tmp_path)
    assert head["entry_id"] == 1 and head["since"] == 0


async def test_server_records_sign_ins_and_changes(app_client: TestClient[Any, Any]) -> None:
    bad = await app_client.post("/api/auth/login", json={"username": "admin",
                                                         "password": "nope"})
    assert bad.status == 401
    admin = await sign_in(app_client, "admin", ADMIN_PASSWORD)
    resp = await admin.call("POST", "/api/keys", json={"name": "k"})
    key_id = (await resp.json())["id"]
    await admin.call("DELETE", f"/api/keys/{key_id}")
    await admin.call("POST", "/api/upstreams", json={
        "name": "up", "base_url": "http://127.0.0.1:9/v1", "api_key": "sk-upstream-secret"})
    await admin.call("POST", "/api/routes", json={"model": "m", "targets": ["up"]})
    await admin.call("DELETE", "/api/routes/m")
    entries = await (await admin.call("GET", "/api/audit?limit=50")).json()
    seen = [(e["action"], e["outcome"]) for e in reversed(entries)]
    for expected in [("auth.login", "failure"), ("auth.login", "success"),
                     ("key.create", "success"), ("key.revoke", "success"),
                     ("upstream.put", "success"), ("route.put", "success"),
                     ("route.remove", "success")]:
        assert expected in seen, (expected, seen)
    assert all(e["source_address"] == "127.0.0.1" for e in entries
               if e["actor"].startswith("user:"))
    assert "sk-upstream-secret" not in json.dumps(entries)
    filtered = await (await admin.call("GET", "/api/audit?action=auth.&outcome=failure")).json()
    assert [e["action"] for e in filtered] == ["auth.login"]
    verify = await (await admin.call("GET", "/api/audit/verify")).json()
    assert verify["ok"] is True and verify["head"] == verify["entries"]
    assert verify["note"] == ""  # a fresh data dir: the head covers the trail from its start
    # tamper with the server's own trail
    store = services(app_client).store
    await store.execute("UPDATE audit_log SET actor='user:ghost' WHERE action='key.revoke'")
    verify = await (await admin.call("GET", "/api/audit/verify")).json()
    assert verify["ok"] is False and "edited" in verify["reason"]


async def test_server_verify_reports_entries_deleted_from_the_end(
        app_client: TestClient[Any, Any]) -> None:
    admin = await sign_in(app_client, "admin", ADMIN_PASSWORD)
    for name in ("a", "b", "c"):
        resp = await admin.call("POST", "/api/keys", json={"name": name})
        assert resp.status == 201, await resp.text()
    verify = await (await admin.call("GET", "/api/audit/verify")).json()
    assert verify["ok"] is True, verify
    last = verify["entries"]
    store = services(app_client).store
    # hide the newest two changes, counter included; no checkpoint exists yet (< 100 entries)
    await store.execute(f"DELETE FROM audit_log WHERE id > {last - 2}")
    await store.execute(f"UPDATE sqlite_sequence SET seq={last - 2} WHERE name='audit_log'")
    verify = await (await admin.call("GET", "/api/audit/verify")).json()
    assert verify["ok"] is False and verify["first_broken_id"] == last - 1, verify
    assert f"entries {last - 1}-{last} missing" in verify["reason"]


async def test_head_updates_leave_the_servers_sqlite_locks_alone(tmp_path: Path) -> None:
    """A server that writes audit entries still sees commits made by CLI processes.

    POSIX locks belong to the process: had the head writer opened and closed state.db's files
    itself, the server would lose its SQLite locks and the next CLI process to close would
    delete the WAL under it (the server then never sees another commit).
    """
    from appliance.store.state import StateStore

    store = await StateStore(tmp_path).open()
    try:
        await audit.write(store, actor="user:a", action="test.server", target="t")
        assert (tmp_path / HEAD_FILE).exists()
        await store.changed()  # the baseline
        code = ("import sys; from pathlib import Path; from appliance.identity import audit; "
                "audit.write_sync(Path(sys.argv[1]), actor='cli:t', action='test.cli', "
                "target='t')")
        await asyncio.to_thread(subprocess.run, [sys.executable, "-c", code, str(tmp_path)],
                                check=True, timeout=60)
        assert (tmp_path / "state.db-wal").exists()
        assert await store.changed()
        rows = await store.fetchall("SELECT action FROM audit_log ORDER BY id")
        assert [r["action"] for r in rows] == ["test.server", "test.cli"]
        assert audit_head.read_head(tmp_path).entry_id == 2  # type: ignore[union-attr]
    finally:
        await store.close()
