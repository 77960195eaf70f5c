"""Site side: verify a bundle and import it into the content store, all or nothing.

Every blob is hashed while it is copied; blobs already present are skipped; an interrupted
import resumes where it stopped. Models become visible in one transaction at the very end.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import msgspec

from appliance.bundle.format import (
    BUNDLE_MANIFEST,
    MODEL_ARTIFACT,
    MODEL_CONFIG,
    TITLE,
    BundleFile,
    BundleManifest,
    ModelConfig,
    OciIndex,
    OciManifest,
    blob_path,
)
from appliance.content.store import BlobStore, NoSpace
from appliance.kernel.errors import ApplianceError, BadRequest
from appliance.store.state import open_sync

_SAFE_PATH = re.compile(r"^(oci-layout|index\.json|blobs/sha256/[0-9a-f]{64})$")
MAX_MANIFEST_BYTES = 16 * 1024 * 1024


class BundleInvalid(ApplianceError, ValueError):
    status = 422
    code = "bundle_invalid"


class ImportResult(msgspec.Struct):
    bundle_id: str
    name: str
    version: str
    models: list[str]
    bytes_copied: int
    bytes_skipped: int
    already_imported: bool = False


Progress = Callable[[int, int], None]  # (bytes done, bytes total)


def read_manifest(root: Path) -> tuple[BundleManifest, bytes]:
    """Parse ``bundle.json`` and check every path in it is one a bundle may contain."""
    path = root / BUNDLE_MANIFEST
    if not root.is_dir():
        raise BundleInvalid(f"{root} is not a bundle directory")
    if not path.is_file() or path.is_symlink():
        raise BundleInvalid(f"{root} has no {BUNDLE_MANIFEST}; is this a bundle?")
    raw = path.read_bytes()[: MAX_MANIFEST_BYTES + 1]
    if len(raw) > MAX_MANIFEST_BYTES:
        raise BundleInvalid(f"{BUNDLE_MANIFEST} is larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        manifest = msgspec.json.decode(raw, type=BundleManifest)
    except msgspec.DecodeError as exc:
        raise BundleInvalid(f"{BUNDLE_MANIFEST} is malformed: {exc}") from None
    for f in manifest.files:
        if not _SAFE_PATH.match(f.path):
            raise BundleInvalid(f"{BUNDLE_MANIFEST} lists a path a bundle may not hold: "
                                f"{f.path!r}")
        if f.path.startswith("blobs/") and f.path.rsplit("/", 1)[1] != f.sha256:
            raise BundleInvalid(f"{f.path}: its name and its listed sha256 differ")
        on_disk = root / f.path
        if on_disk.is_symlink():
            raise BundleInvalid(f"{f.path} is a symbolic link; bundles hold plain files")
    return manifest, raw


def _read_verified(root: Path, rel: str, sha256: str) -> bytes:
    data = (root / rel).read_bytes()
    if hashlib.sha256(data).hexdigest() != sha256:
        raise BundleInvalid(f"{rel} does not match its sha256 in {BUNDLE_MANIFEST}")
    return data


def import_bundle(data_dir: Path, root: Path, *, progress: Progress | None = None
                  ) -> ImportResult:
    """Verify and import the bundle at ``root`` into ``data_dir`` (blocking; run in a thread)."""
    manifest, raw = read_manifest(root)
    manifest_digest = "sha256:" + hashlib.sha256(raw).hexdigest()
    by_path = {f.path: f for f in manifest.files}
    for required in ("oci-layout", "index.json"):
        if required not in by_path:
            raise BundleInvalid(f"{BUNDLE_MANIFEST} does not list {required}")
    index_bytes = _read_verified(root, "index.json", by_path["index.json"].sha256)
    _read_verified(root, "oci-layout", by_path["oci-layout"].sha256)
    conn = open_sync(data_dir)
    try:
        row = conn.execute("SELECT id FROM bundles WHERE manifest_digest=?",
                           (manifest_digest,)).fetchone()
        if row is not None:
            return ImportResult(bundle_id=row["id"], name=manifest.name,
                                version=manifest.version, models=[], bytes_copied=0,
                                bytes_skipped=0, already_imported=True)
        store = BlobStore(data_dir / "blobs")
        blobs = [f for f in manifest.files if f.path.startswith("blobs/")]
        missing = [f for f in blobs if not store.has("sha256:" + f.sha256, f.size)]
        need = sum(f.size for f in missing)
        free = store.free_bytes()
        if need > free:
            raise NoSpace(f"importing needs {need / 1e6:.1f} MB but {store.root} has only "
                          f"{free / 1e6:.1f} MB free")
        total = sum(f.size for f in blobs)
        done = total - need
        if progress:
            progress(done, total)
        for f in missing:
            src = root / f.path
            if not src.is_file():
                raise BundleInvalid(f"{f.path} is listed in {BUNDLE_MANIFEST} but missing; "
                                    "the bundle is incomplete")
            if src.stat().st_size != f.size:
                raise BundleInvalid(f"{f.path} is {src.stat().st_size} bytes, the manifest "
                                    f"says {f.size}; the bundle is truncated or corrupt")

            def step(n: int) -> None:
                nonlocal done
                done += n
                if progress:
                    progress(done, total)
            store.copy_in(src, "sha256:" + f.sha256, f.size, step)
        models = _models(store, index_bytes, by_path)
        bundle_id = "bnd_" + uuid.uuid4().hex[:12]
        _record(conn, manifest, manifest_digest, str(root), bundle_id, blobs, models)
        return ImportResult(bundle_id=bundle_id, name=manifest.name, version=manifest.version,
                            models=[m[0].name for m in models], bytes_copied=need,
                            bytes_skipped=total - need)
    finally:
        conn.close()


def _models(store: BlobStore, index_bytes: bytes, by_path: dict[str, BundleFile]
            ) -> list[tuple[ModelConfig, str, dict[str, str], int]]:
    """(config, version, {file: digest}, size) for every model artefact in the index."""
    try:
        index = msgspec.json.decode(index_bytes, type=OciIndex)
    except msgspec.DecodeError as exc:
        raise BundleInvalid(f"index.json is malformed: {exc}") from None
    found = []
    for desc in index.manifests:
        if desc.artifactType != MODEL_ARTIFACT:
            continue
        if blob_path(desc.digest) not in by_path:
            raise BundleInvalid(f"index.json names {desc.digest}, which the bundle lacks")
        try:
            manifest = msgspec.json.decode(store.path(desc.digest).read_bytes(),
                                           type=OciManifest)
            if manifest.config.mediaType != MODEL_CONFIG:
                raise BundleInvalid(f"model {desc.digest} has an unknown config type")
            config = msgspec.json.decode(store.path(manifest.config.digest).read_bytes(),
                                         type=ModelConfig)
        except (msgspec.DecodeError, FileNotFoundError) as exc:
            raise BundleInvalid(f"model manifest {desc.digest} is unreadable: {exc}") from None
        files: dict[str, str] = {}
        for layer in manifest.layers:
            title = layer.annotations.get(TITLE, "")
            if not title or title.startswith("/") or ".." in title.split("/"):
                raise BundleInvalid(f"model {config.name}: layer title {title!r} is not a "
                                    "safe relative path")
            if blob_path(layer.digest) not in by_path:
                raise BundleInvalid(f"model {config.name}: layer {layer.digest} is missing")
            files[title] = layer.digest
        ref = desc.annotations.get("org.opencontainers.image.ref.name", "")
        version = ref.rpartition(":")[2] or "1"
        found.append((config, version, files, sum(layer.size for layer in manifest.layers)))
    return found


def _record(conn: sqlite3.Connection, manifest: BundleManifest, manifest_digest: str,
            source: str, bundle_id: str, blobs: list[BundleFile],
            models: list[tuple[ModelConfig, str, dict[str, str], int]]) -> None:
    """Make the bundle's contents visible: one transaction, after every blob verified."""
    now = time.time()
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("INSERT INTO bundles VALUES (?,?,?,?,?,?,?)",
                     (bundle_id, manifest.name, manifest.version, manifest.created,
                      manifest_digest, source, now))
        for f in manifest.files:
            if f.path.startswith("blobs/"):
                digest = "sha256:" + f.sha256
                conn.execute("INSERT OR IGNORE INTO blobs VALUES (?,?,?)", (digest, f.size, now))
                conn.execute("INSERT OR IGNORE INTO blob_refs VALUES (?,?)", (digest, bundle_id))
        for config, version, files, size in models:
            existing = conn.execute("SELECT id FROM models WHERE name=? AND version=?",
                                    (config.name, version)).fetchone()
            if existing is not None:
                conn.execute("UPDATE models SET active=0 WHERE name=?", (config.name,))
                conn.execute("UPDATE models SET active=1 WHERE id=?", (existing["id"],))
                continue
            conn.execute("UPDATE models SET active=0 WHERE name=?", (config.name,))
            conn.execute(
                "INSERT INTO models (id, name, version, task, format, files, size, metadata,"
                " bundle_id, created_at, active) VALUES (?,?,?,?,?,?,?,?,?,?,1)",
                ("mdl_" + uuid.uuid4().hex[:12], config.name, version, config.task,
                 config.format, json.dumps(files), size, json.dumps({"source": config.source}),
                 bundle_id, now))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def check_bundle_dir(path: Path) -> Path:
    """Resolve a user-given bundle path (a directory) or raise BadRequest."""
    resolved = path.expanduser().resolve()
    if not resolved.exists():
        raise BadRequest(f"{path} does not exist")
    return resolved
