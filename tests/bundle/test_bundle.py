"""Bundles: create from a recipe, import, and refuse or resume every kind of damage."""

from __future__ import annotations

import itertools
import json
import os
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.bundle.importer import BundleInvalid, import_bundle
from appliance.content.store import BlobStore, DigestMismatch, NoSpace
from appliance.store.state import open_sync
from tests.bundle.conftest import GGUF, MakeBundle, resign


@pytest.fixture
def bundle(make_bundle: MakeBundle, data_dir: Path) -> Path:
    """A signed bundle; ``tmp_path / "data"`` trusts its key."""
    return make_bundle()


def _models(data: Path) -> list[tuple[str, str, int]]:
    conn = open_sync(data)
    rows = conn.execute("SELECT name, version, active FROM models ORDER BY created_at").fetchall()
    conn.close()
    return [tuple(r) for r in rows]


def test_create_then_import(bundle: Path, tmp_path: Path) -> None:
    manifest = json.loads((bundle / "bundle.json").read_text())
    assert manifest["name"] == "site-starter"
    assert {c["kind"] for c in manifest["contents"]} == {"model", "file"}
    assert json.loads((bundle / "oci-layout").read_text())["imageLayoutVersion"] == "1.0.0"
    result = import_bundle(tmp_path / "data", bundle)
    assert result.models == ["my-local-model"]
    assert _models(tmp_path / "data") == [("my-local-model", "1.0.0", 1)]
    again = import_bundle(tmp_path / "data", bundle)
    assert again.already_imported


def test_blobs_already_present_are_skipped(bundle: Path, tmp_path: Path,
                                           signing_key: Ed25519PrivateKey) -> None:
    import_bundle(tmp_path / "data", bundle)
    manifest = json.loads((bundle / "bundle.json").read_text())
    manifest["version"] = "1.0.1"
    resign(bundle, signing_key, manifest)
    result = import_bundle(tmp_path / "data", bundle)
    assert result.bytes_copied == 0 and result.bytes_skipped > len(GGUF)


def _blob_of(bundle: Path, size: int) -> Path:
    return next(p for p in (bundle / "blobs" / "sha256").iterdir() if p.stat().st_size == size)


def test_corrupt_byte_is_refused_and_nothing_visible(bundle: Path, tmp_path: Path) -> None:
    blob = _blob_of(bundle, len(GGUF))
    data = bytearray(blob.read_bytes())
    data[100] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(DigestMismatch):
        import_bundle(tmp_path / "data", bundle)
    assert _models(tmp_path / "data") == []


def test_truncated_and_missing_files_are_refused(bundle: Path, tmp_path: Path) -> None:
    blob = _blob_of(bundle, len(GGUF))
    blob.write_bytes(blob.read_bytes()[:-10])
    with pytest.raises(BundleInvalid, match="truncated"):
        import_bundle(tmp_path / "data", bundle)
    blob.unlink()
    with pytest.raises(BundleInvalid, match="missing"):
        import_bundle(tmp_path / "data", bundle)
    assert _models(tmp_path / "data") == []


@pytest.mark.parametrize("evil", ["../../etc/passwd", "/etc/passwd", "blobs/sha256/../../x"])
def test_unsafe_paths_in_manifest_are_refused(bundle: Path, tmp_path: Path, evil: str) -> None:
    manifest = json.loads((bundle / "bundle.json").read_text())
    manifest["files"][0]["path"] = evil
    (bundle / "bundle.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleInvalid, match="may not hold"):
        import_bundle(tmp_path / "data", bundle)


def test_symlinked_blob_is_refused(bundle: Path, tmp_path: Path) -> None:
    blob = _blob_of(bundle, len(GGUF))
    target = tmp_path / "elsewhere"
    shutil.copy(blob, target)
    blob.unlink()
    os.symlink(target, blob)
    with pytest.raises(BundleInvalid, match="symbolic link"):
        import_bundle(tmp_path / "data", bundle)


def test_malformed_manifest(bundle: Path, tmp_path: Path) -> None:
    (bundle / "bundle.json").write_text("{")
    with pytest.raises(BundleInvalid, match="malformed"):
        import_bundle(tmp_path / "data", bundle)
    with pytest.raises(BundleInvalid, match=r"no bundle\.json"):
        import_bundle(tmp_path / "data", tmp_path)


def test_interrupted_copy_resumes(bundle: Path, tmp_path: Path) -> None:
    blob = _blob_of(bundle, len(GGUF))
    digest = "sha256:" + blob.name
    store = BlobStore(tmp_path / "data" / "blobs")
    store.incoming.mkdir(parents=True)
    # as left by a kill -9 halfway through
    (store.incoming / (digest.replace(":", "-") + ".partial")).write_bytes(
        blob.read_bytes()[: len(GGUF) // 2])
    seen: list[int] = []
    import_bundle(tmp_path / "data", bundle, progress=lambda done, total: seen.append(done))
    assert store.has(digest, len(GGUF))
    assert store.path(digest).read_bytes() == GGUF
    steps = [b - a for a, b in itertools.pairwise(seen)]
    assert len(GGUF) // 2 in steps  # the half already copied counted once, not copied again


def test_full_disk_is_refused_before_copying(bundle: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(BlobStore, "free_bytes", lambda self: 10)
    with pytest.raises(NoSpace, match="needs"):
        import_bundle(tmp_path / "data", bundle)
    assert _models(tmp_path / "data") == []


def test_newer_version_keeps_previous_for_rollback(bundle: Path, tmp_path: Path,
                                                   signing_key: Ed25519PrivateKey) -> None:
    import_bundle(tmp_path / "data", bundle)
    manifest = json.loads((bundle / "bundle.json").read_text())
    index = json.loads((bundle / "index.json").read_text())
    index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] = \
        "my-local-model:2.0.0"
    raw = json.dumps(index).encode()
    (bundle / "index.json").write_bytes(raw)
    import hashlib

    for f in manifest["files"]:
        if f["path"] == "index.json":
            f["sha256"], f["size"] = hashlib.sha256(raw).hexdigest(), len(raw)
    resign(bundle, signing_key, manifest)
    import_bundle(tmp_path / "data", bundle)
    assert _models(tmp_path / "data") == [("my-local-model", "1.0.0", 0),
                                          ("my-local-model", "2.0.0", 1)]
