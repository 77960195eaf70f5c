"""Secrets at rest: encrypted in state.db, unreadable without the master key, rotation."""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import sqlite3
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from appliance.gateway import routing
from appliance.identity import secrets
from appliance.store.state import StateStore
from tests.conftest import appliance_cmd
from tests.identity.conftest import ADMIN_PASSWORD, sign_in

SECRET = "sk-provider-0123456789-very-secret"


async def _store_with_upstream(data_dir: Path) -> None:
    store = await StateStore(data_dir).open()
    await routing.put_upstream(store, routing.UpstreamRecord(
        name="openai", base_url="https://api.example/v1", api_key=SECRET))
    await store.close()


async def _read_key(data_dir: Path) -> str:
    store = await StateStore(data_dir).open()
    try:
        return (await routing.list_upstreams(store))[0].api_key
    finally:
        await store.close()


async def test_encrypted_in_the_database_and_key_file_private(tmp_path: Path) -> None:
    await _store_with_upstream(tmp_path)
    raw = (tmp_path / "state.db").read_bytes() + (tmp_path / "state.db-wal").read_bytes() \
        if (tmp_path / "state.db-wal").exists() else (tmp_path / "state.db").read_bytes()
    assert SECRET.encode() not in raw
    stored = sqlite3.connect(tmp_path / "state.db").execute(
        "SELECT api_key FROM upstreams").fetchone()[0]
    assert stored.startswith("enc1.")
    assert stat.S_IMODE(os.stat(tmp_path / "master.key").st_mode) == 0o600
    assert await _read_key(tmp_path) == SECRET


async def test_copy_without_master_key_cannot_read(tmp_path: Path) -> None:
    await _store_with_upstream(tmp_path / "site")
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "site", copy)
    (copy / "master.key").unlink()
    with pytest.raises(secrets.SecretError):
        secrets.Keyring.load(copy, environ={}, create=False)
    # a fresh key (what a server would create) does not open the old secrets either
    ring = secrets.Keyring.load(copy, environ={})
    stored = sqlite3.connect(copy / "state.db").execute(
        "SELECT api_key FROM upstreams").fetchone()[0]
    with pytest.raises(secrets.SecretError):
        ring.open(stored, "upstreams.api_key")


def test_master_key_from_environment_and_passphrase(tmp_path: Path) -> None:
    key = base64.b64encode(os.urandom(32)).decode()
    ring = secrets.Keyring.load(tmp_path, environ={"APPLIANCE_MASTER_KEY": key})
    sealed = ring.seal("s3cret", "p")
    assert not (tmp_path / "master.key").exists()
    assert secrets.Keyring.load(tmp_path, environ={"APPLIANCE_MASTER_KEY": key}).open(
        sealed, "p") == "s3cret"
    with pytest.raises(secrets.SecretError):
        ring.open(sealed, "other-purpose")  # bound to its column
    env = {"APPLIANCE_MASTER_PASSPHRASE": "correct horse battery staple"}
    sealed = secrets.Keyring.load(tmp_path, environ=env).seal("x", "p")
    assert secrets.Keyring.load(tmp_path, environ=env).open(sealed, "p") == "x"
    bad = {"APPLIANCE_MASTER_PASSPHRASE": "wrong"}
    with pytest.raises(secrets.SecretError):
        secrets.Keyring.load(tmp_path, environ=bad).open(sealed, "p")


async def test_rotate_master_rewraps(tmp_path: Path) -> None:
    await _store_with_upstream(tmp_path)
    before = sqlite3.connect(tmp_path / "state.db").execute(
        "SELECT api_key FROM upstreams").fetchone()[0]
    out = await asyncio.to_thread(
        subprocess.run, appliance_cmd("secrets", "rotate-master", "--data-dir", str(tmp_path),
                                      "--json"), capture_output=True, text=True, check=True)
    assert '"rewrapped": 1' in out.stdout
    after = sqlite3.connect(tmp_path / "state.db").execute(
        "SELECT api_key FROM upstreams").fetchone()[0]
    assert before.split(".")[1] != after.split(".")[1]
    assert before.split(".")[3] == after.split(".")[3]  # data untouched, only the DEK re-wrapped
    assert await _read_key(tmp_path) == SECRET
    ring = secrets.Keyring.load(tmp_path)
    assert list(ring.keys) == [ring.primary]  # old master key gone


async def test_api_never_returns_upstream_keys(app_client: TestClient[Any, Any]) -> None:
    admin = await sign_in(app_client, "admin", ADMIN_PASSWORD)
    resp = await admin.call("POST", "/api/upstreams", json={
        "name": "prov", "base_url": "http://127.0.0.1:9/v1", "api_key": SECRET})
    assert resp.status == 201
    listed = await (await admin.call("GET", "/api/upstreams")).text()
    assert SECRET not in listed and '"api_key":"set"' in listed
    audit = await (await admin.call("GET", "/api/audit")).text()
    assert SECRET not in audit
