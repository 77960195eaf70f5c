"""The hash-chained audit trail: what is recorded, and verify catches every kind of tampering."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from appliance.identity import audit
from appliance.store.state import open_sync
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
    assert verify["ok"] is True
    # tamper with the server's own trail
    store = services(app_client).store
    await store.execute("UPDATE audit_log SET actor='user:ghost' WHERE action='key.revoke'")
    verify = await (await admin.call("GET", "/api/audit/verify")).json()
    assert verify["ok"] is False and "edited" in verify["reason"]
