"""bundle show / remove / gc: reference counts, rollback of models, garbage collection."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.bundle.importer import import_bundle
from appliance.bundle.manage import bundle_details, collect_garbage, remove_bundle
from appliance.content.store import BlobStore
from appliance.kernel.errors import Conflict, NotFound
from appliance.store.state import open_sync
from tests.bundle.conftest import MakeBundle, gguf, resign
from tests.conftest import appliance_cmd


def _blob_files(data: Path) -> set[str]:
    return {p.name for p in (data / "blobs" / "sha256").iterdir()}


def test_shared_blobs_live_until_the_last_bundle_goes(make_bundle: MakeBundle, data_dir: Path,
                                                      signing_key: Ed25519PrivateKey) -> None:
    first = make_bundle()
    second = make_bundle(model=gguf(5000, fill=b"v2"), version="2.0.0")
    manifest = json.loads((second / "bundle.json").read_text())
    manifest["name"] = "site-update"
    resign(second, signing_key, manifest)
    a = import_bundle(data_dir, first)
    blobs_a = _blob_files(data_dir)
    b = import_bundle(data_dir, second)
    conn = open_sync(data_dir)
    try:
        details = bundle_details(conn, a.bundle_id)
        assert details["shared_blobs"] >= 1  # the k3s file is in both
        assert details["models"][0]["active"] == 0  # the second import's version is active
        assert bundle_details(conn, "site-update")["id"] == b.bundle_id
        remove_bundle(conn, b.bundle_id, actor="test")
        # the first bundle's model version is active again
        assert conn.execute("SELECT active FROM models").fetchone()[0] == 1
        gc = collect_garbage(conn, BlobStore(data_dir / "blobs"))
        assert gc.blobs_removed > 0
        assert _blob_files(data_dir) == blobs_a
        remove_bundle(conn, a.bundle_id, actor="test")
        collect_garbage(conn, BlobStore(data_dir / "blobs"))
        assert _blob_files(data_dir) == set()
        assert conn.execute("SELECT count(*) FROM models").fetchone()[0] == 0
        actions = [r[0] for r in conn.execute("SELECT action FROM audit_log ORDER BY id")]
        assert actions.count("bundle.remove") == 2
        with pytest.raises(NotFound):
            bundle_details(conn, a.bundle_id)
    finally:
        conn.close()


def test_import_racing_gc_is_refused_cleanly(make_bundle: MakeBundle, data_dir: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from appliance.bundle import importer

    bundle = make_bundle()
    real = importer._analyse

    def analyse_then_vanish(conn: object, store: BlobStore, *args: object) -> object:
        out = real(conn, store, *args)  # type: ignore[arg-type]
        next(store.root.glob("sha256/*")).unlink()  # as if a gc had removed it meanwhile
        return out

    monkeypatch.setattr(importer, "_analyse", analyse_then_vanish)
    with pytest.raises(Conflict, match="vanished"):
        import_bundle(data_dir, bundle)
    monkeypatch.setattr(importer, "_analyse", real)
    assert import_bundle(data_dir, bundle).models == ["my-local-model"]


def test_cli_show_remove_gc(make_bundle: MakeBundle, data_dir: Path) -> None:
    result = import_bundle(data_dir, make_bundle())
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}

    def cli(*args: str) -> str:
        proc = subprocess.run(appliance_cmd("bundle", *args, "--data-dir", str(data_dir)),
                              capture_output=True, text=True, env=env, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    out = cli("show", result.bundle_id)
    assert "model my-local-model 1.0.0" in out and "signed by" in out
    assert json.loads(cli("show", "site-starter", "--json"))["id"] == result.bundle_id
    assert "deleted" in cli("remove", "site-starter")
    assert _blob_files(data_dir) == set()
    assert "0 unreferenced blobs" in cli("gc")
