"""Parts for FAT32 media: split on create, joined and verified on import."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.bundle.importer import BundleInvalid, import_bundle
from appliance.bundle.parts import DEFAULT_PART_SIZE, parse_size
from appliance.content.store import BlobStore
from appliance.store.state import open_sync
from tests.bundle.conftest import MakeBundle, gguf

MODEL = gguf(20484)  # 5 parts of 4096 and one of 4


def _split(bundle: Path) -> dict[str, object]:
    manifest = json.loads((bundle / "bundle.json").read_text())
    return next(f for f in manifest["files"] if f["size"] == len(MODEL))


def _count(data: Path) -> int:
    conn = open_sync(data)
    try:
        return int(conn.execute("SELECT count(*) FROM models").fetchone()[0])
    finally:
        conn.close()


def test_parse_size() -> None:
    assert parse_size("4000M") == 4_000_000_000
    assert parse_size("3.5GiB") == int(3.5 * 1024**3)
    assert parse_size("1048576") == 1048576
    assert DEFAULT_PART_SIZE < 4 * 1024**3
    for bad in ("12x", "", "10k"):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_split_bundle_imports(make_bundle: MakeBundle, data_dir: Path) -> None:
    bundle = make_bundle(part_size=4096, model=MODEL)
    entry = _split(bundle)
    parts = entry["parts"]
    assert isinstance(parts, list) and len(parts) == 6
    assert all(p["size"] <= 4096 for p in parts)
    assert not (bundle / str(entry["path"])).exists()
    assert all((bundle / p["path"]).is_file() for p in parts)
    result = import_bundle(data_dir, bundle)
    assert result.models == ["my-local-model"]
    store = BlobStore(data_dir / "blobs")
    assert store.path("sha256:" + str(entry["sha256"])).read_bytes() == MODEL


def test_truncated_part_is_refused(make_bundle: MakeBundle, data_dir: Path) -> None:
    bundle = make_bundle(part_size=4096, model=MODEL)
    part = bundle / _split(bundle)["parts"][2]["path"]  # type: ignore[index]
    part.write_bytes(part.read_bytes()[:-1])
    with pytest.raises(BundleInvalid, match=r"part .*\.part0003 is 4095 bytes.*truncated"):
        import_bundle(data_dir, bundle)
    assert _count(data_dir) == 0


def test_dropped_part_is_refused(make_bundle: MakeBundle, data_dir: Path) -> None:
    bundle = make_bundle(part_size=4096, model=MODEL)
    (bundle / _split(bundle)["parts"][4]["path"]).unlink()  # type: ignore[index]
    with pytest.raises(BundleInvalid, match=r"part .*\.part0005 is missing"):
        import_bundle(data_dir, bundle)
    assert _count(data_dir) == 0


def test_corrupt_part_is_named(make_bundle: MakeBundle, data_dir: Path) -> None:
    bundle = make_bundle(part_size=4096, model=MODEL)
    part = bundle / _split(bundle)["parts"][1]["path"]  # type: ignore[index]
    data = bytearray(part.read_bytes())
    data[10] ^= 0xFF
    part.write_bytes(bytes(data))
    with pytest.raises(BundleInvalid, match=r"part .*\.part0002 does not match its sha256"):
        import_bundle(data_dir, bundle)
    assert _count(data_dir) == 0


def test_interrupted_split_copy_resumes_mid_part(make_bundle: MakeBundle, data_dir: Path
                                                 ) -> None:
    bundle = make_bundle(part_size=4096, model=MODEL)
    digest = "sha256:" + str(_split(bundle)["sha256"])
    store = BlobStore(data_dir / "blobs")
    store.incoming.mkdir(parents=True)
    # as left by a kill -9 in the middle of the third part
    (store.incoming / (digest.replace(":", "-") + ".partial")).write_bytes(MODEL[:10000])
    import_bundle(data_dir, bundle)
    assert store.path(digest).read_bytes() == MODEL


def test_resume_with_a_wrong_partial_is_refused_then_recovers(
        make_bundle: MakeBundle, data_dir: Path) -> None:
    bundle = make_bundle(part_size=4096, model=MODEL)
    digest = "sha256:" + str(_split(bundle)["sha256"])
    store = BlobStore(data_dir / "blobs")
    store.incoming.mkdir(parents=True)
    partial = store.incoming / (digest.replace(":", "-") + ".partial")
    partial.write_bytes(b"X" * 5000)  # garbage left by some other writer
    with pytest.raises(Exception, match="the manifest says"):
        import_bundle(data_dir, bundle)
    assert not partial.exists()
    import_bundle(data_dir, bundle)
    assert store.path(digest).read_bytes() == MODEL
