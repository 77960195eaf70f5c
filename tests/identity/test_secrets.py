"""Secrets at rest: encrypted in state.db, unreadable without the master key, rotation."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import sqlite3
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from appliance.cluster.secrets import ENGINE_TOKEN, ENGINE_TOKEN_DIR
from appliance.cluster.service import HostService
from appliance.engines.worker import EngineApp
from appliance.gateway import routing
from appliance.identity import secrets
from appliance.kernel.errors import ApplianceError
from appliance.settings import ClusterSettings
from appliance.store.state import StateStore, open_sync
from tests.conftest import appliance_cmd, start_app
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
    assert '"rewrapped": 1' in out.stdout and '"files": 0' in out.stdout
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


# --- engine hosts' token files ------------------------------------------------------------------


class _Runner:
    """What the engine worker's views read of a loaded model."""

    name = "tiny"
    task = "chat"
    loaded_at = 0.0
    waiting = 0


async def _engine_tokens(data_dir: Path, hosts: list[str]) -> dict[str, str]:
    """The tokens engine-host gives ``hosts`` (created as sealed files on first use)."""
    store = await StateStore(data_dir).open()
    service = HostService(store, data_dir, ClusterSettings())
    try:
        return {h: await service._engine_token(h, "tiny") for h in hosts}
    finally:
        await service.close()
        await store.close()


def _token_file(data_dir: Path, host: str) -> str:
    return (data_dir / secrets.ENGINE_TOKEN_DIR / f"{host}--tiny").read_text()


def _rotate(data_dir: Path) -> secrets.Rotation:
    conn = open_sync(data_dir)
    try:
        return secrets.rotate_master(conn, data_dir)
    finally:
        conn.close()


def test_engine_token_files_are_listed_for_rotation() -> None:
    assert (ENGINE_TOKEN_DIR, ENGINE_TOKEN) in secrets.SECRET_FILES


async def test_rotate_master_rewraps_engine_token_files(tmp_path: Path) -> None:
    await _store_with_upstream(tmp_path)
    tokens = await _engine_tokens(tmp_path, ["gpu1", "gpu2"])
    before = {h: _token_file(tmp_path, h) for h in tokens}
    assert all(v.startswith("enc1.") for v in before.values())
    assert all(t not in v for t, v in zip(tokens.values(), before.values(), strict=True))
    # an engine host serving with its token since before the rotation
    engine = await start_app(EngineApp(_Runner(), tokens["gpu1"]).build())  # type: ignore[arg-type]
    try:
        out = await asyncio.to_thread(
            subprocess.run, appliance_cmd("secrets", "rotate-master", "--data-dir",
                                          str(tmp_path), "--json"),
            capture_output=True, text=True, check=True)
        done = json.loads(out.stdout)
        assert done["rewrapped"] == 3 and done["files"] == 2 and done["unreadable_files"] == []
        ring = secrets.Keyring.load(tmp_path)
        assert list(ring.keys) == [done["new_key"]]  # the old master key is gone
        for host, value in before.items():
            after = _token_file(tmp_path, host)
            assert after.split(".")[1] == done["new_key"] != value.split(".")[1]
            assert after.split(".")[3] == value.split(".")[3]  # only the data key re-wrapped
            assert stat.S_IMODE(os.stat(tmp_path / secrets.ENGINE_TOKEN_DIR /
                                        f"{host}--tiny").st_mode) == 0o600
        assert not (tmp_path / "keys" / "engine-tokens.rotating").exists()
        # engine-host reads the same tokens under the new key ...
        assert await _engine_tokens(tmp_path, ["gpu1", "gpu2"]) == tokens
        assert await _read_key(tmp_path) == SECRET
        # ... and the running engine still accepts what the appliance now sends it
        store = await StateStore(tmp_path).open()
        service = HostService(store, tmp_path, ClusterSettings())
        try:
            base_url = f"http://127.0.0.1:{engine.port}/v1"
            token = await service._engine_token("gpu1", "tiny")
            await service.wait_serving(base_url, token, "tiny", within_s=5)
            with pytest.raises(ApplianceError, match="HTTP 401"):
                await service.wait_serving(base_url, tokens["gpu2"], "tiny", within_s=1)
        finally:
            await service.close()
            await store.close()
    finally:
        await engine.close()


@pytest.mark.parametrize("stop", ["before the commit", "midway through the swap"])
async def test_rotation_cut_short_leaves_every_token_readable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stop: str) -> None:
    await _store_with_upstream(tmp_path)
    tokens = await _engine_tokens(tmp_path, ["gpu1", "gpu2", "gpu3"])
    old_key = secrets.Keyring.load(tmp_path).primary
    if stop == "before the commit":
        def fail(*args: Any) -> int:
            raise OSError("disk full")
        monkeypatch.setattr(secrets, "_rewrap_columns", fail)
    else:
        real_swap = secrets._swap_files

        def fail(staged: list[tuple[Path, Path]]) -> None:
            real_swap(staged[:1])  # the first file is moved, then the process "dies"
            raise OSError("killed")
        monkeypatch.setattr(secrets, "_swap_files", fail)
    with pytest.raises(OSError):
        await asyncio.to_thread(_rotate, tmp_path)
    monkeypatch.undo()
    ring = secrets.Keyring.load(tmp_path)
    assert old_key in ring.keys and len(ring.keys) == 2  # both keys kept
    kids = sorted(_token_file(tmp_path, h).split(".")[1] for h in tokens)
    if stop == "before the commit":
        assert kids == [old_key] * 3  # the files in use were not touched
        assert not (tmp_path / "keys" / "engine-tokens.rotating").exists()
    else:
        assert kids.count(ring.primary) == 1 and kids.count(old_key) == 2
    assert await _engine_tokens(tmp_path, list(tokens)) == tokens
    assert await _read_key(tmp_path) == SECRET
    # the next rotation finishes the job
    done = await asyncio.to_thread(_rotate, tmp_path)
    assert done.files == 3 and done.unreadable_files == []
    assert list(secrets.Keyring.load(tmp_path).keys) == [done.new_key]
    assert {_token_file(tmp_path, h).split(".")[1] for h in tokens} == {done.new_key}
    assert await _engine_tokens(tmp_path, list(tokens)) == tokens
    assert await _read_key(tmp_path) == SECRET


async def test_token_file_no_key_opens_is_reported_and_left(tmp_path: Path) -> None:
    tokens = await _engine_tokens(tmp_path, ["gpu1"])
    foreign = secrets.Keyring({"k" * 12: b"\0" * 32}, "k" * 12, path=None).seal(
        "x", ENGINE_TOKEN)
    lost = tmp_path / secrets.ENGINE_TOKEN_DIR / "gpu9--tiny"
    lost.write_text(foreign)
    out = await asyncio.to_thread(
        subprocess.run, appliance_cmd("secrets", "rotate-master", "--data-dir", str(tmp_path)),
        capture_output=True, text=True, check=True)
    assert "1 of them in files" in out.stdout
    assert "keys/engine-tokens/gpu9--tiny does not open" in out.stderr
    assert lost.read_text() == foreign
    assert await _engine_tokens(tmp_path, ["gpu1"]) == tokens
