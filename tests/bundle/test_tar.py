"""Bundles as tar archives: read in place, refused whole when any member is unsafe."""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

import pytest

from appliance.bundle.importer import BundleInvalid, import_bundle
from appliance.content.store import BlobStore
from appliance.store.state import open_sync
from tests.bundle.conftest import GGUF, MakeBundle


def _count(data: Path) -> int:
    conn = open_sync(data)
    try:
        return int(conn.execute("SELECT count(*) FROM models").fetchone()[0])
    finally:
        conn.close()


@pytest.mark.parametrize("top", ["bundle", "."])
def test_tar_of_a_bundle_imports(make_bundle: MakeBundle, data_dir: Path, tmp_path: Path,
                                 top: str) -> None:
    bundle = make_bundle(part_size=4096)
    tar = tmp_path / "bundle.tar"
    if top == ".":
        subprocess.run(["tar", "cf", str(tar), "-C", str(bundle), "."], check=True)
    else:
        subprocess.run(["tar", "cf", str(tar), "-C", str(bundle.parent), bundle.name],
                       check=True)
    result = import_bundle(data_dir, tar)
    assert result.models == ["my-local-model"] and result.signed_by


def test_tar_import_resumes(make_bundle: MakeBundle, data_dir: Path, tmp_path: Path) -> None:
    bundle = make_bundle()
    tar = tmp_path / "b.tar"
    subprocess.run(["tar", "cf", str(tar), "-C", str(bundle), "."], check=True)
    blob = next(p for p in (bundle / "blobs" / "sha256").iterdir()
                if p.stat().st_size == len(GGUF))
    store = BlobStore(data_dir / "blobs")
    store.incoming.mkdir(parents=True)
    (store.incoming / f"sha256-{blob.name}.partial").write_bytes(GGUF[:5000])
    import_bundle(data_dir, tar)
    assert store.path("sha256:" + blob.name).read_bytes() == GGUF


def _evil_tar(bundle: Path, path: Path, member: tarfile.TarInfo, data: bytes = b"") -> Path:
    with tarfile.open(path, "w") as tar:
        tar.add(bundle, arcname="bundle")
        tar.addfile(member, io.BytesIO(data) if data else None)
    return path


def _info(name: str, kind: bytes = tarfile.REGTYPE, link: str = "", size: int = 0
          ) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.size = size
    return info


@pytest.mark.parametrize(("member", "message"), [
    (_info("bundle/../../etc/cron.d/x", size=3), "climbs out"),
    (_info("/etc/passwd", size=3), "absolute"),
    (_info("bundle/blobs/sha256/evil", tarfile.SYMTYPE, "/etc/shadow"), "link"),
    (_info("bundle/hard", tarfile.LNKTYPE, "bundle/bundle.json"), "link"),
    (_info("bundle/dev", tarfile.CHRTYPE), "device"),
    (_info("bundle/fifo", tarfile.FIFOTYPE), "FIFO"),
])
def test_unsafe_tar_members_are_refused(make_bundle: MakeBundle, data_dir: Path,
                                        tmp_path: Path, member: tarfile.TarInfo,
                                        message: str) -> None:
    tar = _evil_tar(make_bundle(), tmp_path / "evil.tar", member,
                    b"abc" if member.isreg() else b"")
    with pytest.raises(BundleInvalid, match=message):
        import_bundle(data_dir, tar)
    assert _count(data_dir) == 0
    assert not (data_dir / "blobs" / "sha256").exists()


def test_truncated_tar_is_refused(make_bundle: MakeBundle, data_dir: Path, tmp_path: Path
                                  ) -> None:
    bundle = make_bundle()
    tar = tmp_path / "b.tar"
    subprocess.run(["tar", "cf", str(tar), "-C", str(bundle), "."], check=True)
    raw = tar.read_bytes()
    tar.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(BundleInvalid):
        import_bundle(data_dir, tar)
    assert _count(data_dir) == 0


def test_not_a_tar(data_dir: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"\x00\x01" * 1000)
    with pytest.raises(BundleInvalid):
        import_bundle(data_dir, junk)
