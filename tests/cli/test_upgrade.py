"""`appliance upgrade`: verify, test-run and swap the binary; roll back; migrate old data dirs."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import pytest

from appliance.cli import main
from appliance.cli.service_unit import BINARY_PATH, PREVIOUS_PATH, under
from appliance.gateway.keys import KeyVerifier, list_keys
from appliance.gateway.routing import list_routes, list_upstreams
from appliance.store.state import StateStore, migrations

DATA = Path(__file__).parent / "data"
# the secret of the key in state-0.1.0.sql (a throwaway test key)
RELEASE_KEY_SECRET = "sk-fa-J8JB-heIU2g802d9IVN9U0um_Dtex8ivPsysz_UrjY4"


def _fake_binary(path: Path, version: str, *, works: bool = True) -> Path:
    """A stand-in for a new appliance binary: answers --version like the real one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = f"echo 'appliance {version} (test)'" if works else "echo broken >&2; exit 3"
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


def _with_sidecar(path: Path) -> Path:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    Path(f"{path}.sha256").write_text(f"{digest}  {path.name}\n")
    return path


@pytest.fixture
def prefix(tmp_path: Path) -> Path:
    """A staging root with version 1.0.0 installed."""
    root = tmp_path / "root"
    _fake_binary(under(root, BINARY_PATH), "1.0.0")
    return root


def _upgrade(prefix: Path, *args: str) -> int:
    return main(["upgrade", "--prefix", str(prefix), "--no-restart", *args])


def _installed(prefix: Path) -> str:
    return under(prefix, BINARY_PATH).read_text()


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["upgrade", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--rollback" in out and ".sha256" in out


def test_upgrade_swaps_and_keeps_previous(prefix: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    new = _with_sidecar(_fake_binary(tmp_path / "new" / "appliance", "2.0.0"))
    assert _upgrade(prefix, str(new)) == 0
    assert "appliance 2.0.0" in capsys.readouterr().out
    assert "2.0.0" in _installed(prefix)
    assert "1.0.0" in under(prefix, PREVIOUS_PATH).read_text()
    assert under(prefix, BINARY_PATH).stat().st_mode & 0o777 == 0o755
    leftovers = [p.name for p in under(prefix, BINARY_PATH).parent.iterdir()]
    assert sorted(leftovers) == ["foundry-appliance", "foundry-appliance.previous"]


def test_rollback_swaps_back(prefix: Path, tmp_path: Path) -> None:
    new = _with_sidecar(_fake_binary(tmp_path / "new" / "appliance", "2.0.0"))
    assert _upgrade(prefix, str(new)) == 0
    assert _upgrade(prefix, "--rollback") == 0
    assert "1.0.0" in _installed(prefix)
    assert "2.0.0" in under(prefix, PREVIOUS_PATH).read_text()


def test_rollback_without_previous_fails(prefix: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert _upgrade(prefix, "--rollback") == 1
    assert "no previous binary" in capsys.readouterr().err
    assert "1.0.0" in _installed(prefix)


def test_digest_mismatch_changes_nothing(prefix: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    new = _with_sidecar(_fake_binary(tmp_path / "new" / "appliance", "2.0.0"))
    new.write_text(new.read_text() + "# tampered\n")
    assert _upgrade(prefix, str(new)) == 1
    assert "does not match" in capsys.readouterr().err
    assert "1.0.0" in _installed(prefix) and not under(prefix, PREVIOUS_PATH).exists()


def test_missing_digest_is_refused(prefix: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    new = _fake_binary(tmp_path / "new" / "appliance", "2.0.0")
    assert _upgrade(prefix, str(new)) == 1
    assert ".sha256" in capsys.readouterr().err
    digest = hashlib.sha256(new.read_bytes()).hexdigest()
    assert _upgrade(prefix, str(new), "--sha256", digest) == 0
    assert "2.0.0" in _installed(prefix)


def test_binary_that_does_not_run_is_refused(prefix: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    bad = _with_sidecar(_fake_binary(tmp_path / "new" / "appliance", "2.0.0", works=False))
    assert _upgrade(prefix, str(bad)) == 1
    assert "--version failed" in capsys.readouterr().err
    assert "1.0.0" in _installed(prefix)
    assert [p.name for p in under(prefix, BINARY_PATH).parent.iterdir()] == ["foundry-appliance"]


def test_upgrade_from_a_bundle_dir(prefix: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    new = _fake_binary(bundle / "files" / "appliance", "3.0.0")
    digest = hashlib.sha256(new.read_bytes()).hexdigest()
    (bundle / "bundle.json").write_text(json.dumps({
        "format": 1, "name": "appliance-upgrade", "version": "3.0.0",
        "files": [{"path": "files/appliance", "size": new.stat().st_size, "sha256": digest}],
    }))
    assert _upgrade(prefix, str(bundle)) == 0
    assert "3.0.0" in _installed(prefix)


def test_bundle_without_binary_is_refused(prefix: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bundle.json").write_text(json.dumps({"files": []}))
    assert _upgrade(prefix, str(tmp_path)) == 1
    assert "no file named 'appliance'" in capsys.readouterr().err


def test_fresh_install_without_current_binary(tmp_path: Path) -> None:
    root = tmp_path / "empty-root"
    new = _with_sidecar(_fake_binary(tmp_path / "new" / "appliance", "2.0.0"))
    assert _upgrade(root, str(new)) == 0
    assert "2.0.0" in _installed(root) and not under(root, PREVIOUS_PATH).exists()


async def test_release_0_1_0_data_dir_opens_after_migrations(tmp_path: Path) -> None:
    """Forward test: a data dir written by 0.1.0 opens with today's migrations, data intact."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    conn = sqlite3.connect(data_dir / "state.db")
    conn.executescript((DATA / "state-0.1.0.sql").read_text())
    conn.close()

    store = await StateStore(data_dir).open()
    try:
        rows = await store.fetchall("SELECT version FROM schema_migrations ORDER BY version")
        assert [r[0] for r in rows] == [m[0] for m in migrations()]
        keys = await list_keys(store)
        assert [k.name for k in keys] == ["release-0.1.0"]
        key = await KeyVerifier(store).verify(f"Bearer {RELEASE_KEY_SECRET}")
        assert key.id == keys[0].id
        assert [u.name for u in await list_upstreams(store)] == ["gpu-a"]
        routes = await list_routes(store)
        assert routes[0].model == "llama-3-8b" and routes[0].fallback == ["smollm2-135m-instruct"]
    finally:
        await store.close()
    # opening again is a no-op (every migration already applied)
    again = await StateStore(data_dir).open()
    await again.close()
