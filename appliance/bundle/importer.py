"""Site side: verify a bundle and import it into the content store, all or nothing.

Every blob is hashed while it is copied; blobs already present are skipped; an interrupted
import resumes where it stopped. Models become visible in one transaction at the very end.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import sqlite3
import time
import uuid
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import msgspec

from appliance.bundle.format import (
    BUNDLE_MANIFEST,
    DIGEST_RE,
    KIND,
    MODEL_ARTIFACT,
    MODEL_CONFIG,
    PLATFORM,
    REF_NAME,
    TITLE,
    BundleFile,
    BundleManifest,
    ModelConfig,
    OciIndex,
    OciManifest,
    blob_path,
)
from appliance.bundle.images import ImageDocument, media_type_of, split_name
from appliance.bundle.manage import check_blobs_present
from appliance.bundle.parts import PartsReader, part_name
from appliance.bundle.signing import (
    MAX_SIGNATURE_BYTES,
    SIGNATURE_FILE,
    SignatureError,
    trusted_keys,
    verify_manifest,
)
from appliance.bundle.source import BundleInvalid, BundleSource, open_source, read_small
from appliance.content.store import CHUNK, BlobStore, NoSpace, Reader
from appliance.kernel.errors import BadRequest
from appliance.models.licences import detect as detect_licence
from appliance.models.metadata import HeaderInvalid, extract
from appliance.models.scan import CLAMAV_SUFFIXES, ModelRefused, scan_model
from appliance.store.state import open_sync

log = logging.getLogger(__name__)

_SAFE_PATH = re.compile(r"^(oci-layout|index\.json|blobs/sha256/[0-9a-f]{64})$")
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
MAX_INDEX_BYTES = 64 * 1024 * 1024

__all__ = ["BundleInvalid", "ImportResult", "import_bundle", "read_manifest", "verify_bundle"]


class ImportResult(msgspec.Struct):
    bundle_id: str
    name: str
    version: str
    models: list[str]
    bytes_copied: int
    bytes_skipped: int
    already_imported: bool = False
    signed_by: str | None = None
    images: list[str] = []


Progress = Callable[[int, int], None]  # (bytes done, bytes total)


def read_manifest(src: BundleSource) -> tuple[BundleManifest, bytes]:
    """Parse ``bundle.json`` and check every path in it is one a bundle may contain."""
    raw = read_small(src, BUNDLE_MANIFEST, MAX_MANIFEST_BYTES)
    if raw is None:
        raise BundleInvalid(f"{src.name} has no {BUNDLE_MANIFEST}; is this a bundle?")
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
        if f.parts:
            if not f.path.startswith("blobs/"):
                raise BundleInvalid(f"{f.path}: only blobs may be split into parts")
            for number, part in enumerate(f.parts, 1):
                if part.path != part_name(f.path, number):
                    raise BundleInvalid(f"{BUNDLE_MANIFEST} lists a part a bundle may not "
                                        f"hold: {part.path!r}")
                src.size(part.path)  # refuses a symbolic link
            if sum(p.size for p in f.parts) != f.size:
                raise BundleInvalid(f"{f.path}: its parts do not add up to its size")
        else:
            src.size(f.path)  # refuses a symbolic link
    return manifest, raw


def check_signature(conn: sqlite3.Connection, src: BundleSource, raw: bytes, *,
                    allow_unsigned: bool, trusted: dict[str, Any] | None = None
                    ) -> str | None:
    """The signer's key id; None for an unsigned bundle let in by ``allow_unsigned``.

    A signature by a trusted key that does not verify is refused even then: it means the
    bundle was altered.
    """
    sig = read_small(src, SIGNATURE_FILE, MAX_SIGNATURE_BYTES)
    keys = trusted_keys(conn) if trusted is None else trusted
    try:
        return verify_manifest(raw, sig, keys)
    except SignatureError as exc:
        if allow_unsigned and "does not match" not in exc.message:
            log.warning("importing %s without a trusted signature: %s", src.name, exc.message)
            return None
        raise


def _read_verified(src: BundleSource, f: BundleFile, limit: int) -> bytes:
    data = read_small(src, f.path, limit)
    if data is None:
        raise BundleInvalid(f"{f.path} is listed in {BUNDLE_MANIFEST} but missing")
    if hashlib.sha256(data).hexdigest() != f.sha256:
        raise BundleInvalid(f"{f.path} does not match its sha256 in {BUNDLE_MANIFEST}")
    return data


def _opener(src: BundleSource, f: BundleFile) -> Callable[[int], Reader]:
    """Open a blob of the bundle at an offset, joining its parts when it was split."""
    if not f.parts:
        size = src.size(f.path)
        if size is None:
            raise BundleInvalid(f"{f.path} is listed in {BUNDLE_MANIFEST} but missing; "
                                "the bundle is incomplete")
        if size != f.size:
            raise BundleInvalid(f"{f.path} is {size} bytes, the manifest says {f.size}; "
                                "the bundle is truncated or corrupt")

    def open_at(offset: int) -> Reader:
        if f.parts:
            return PartsReader(src, f.parts, offset)
        reader = src.open(f.path)
        reader.seek(offset)
        return reader
    return open_at


def import_bundle(data_dir: Path, path: Path, *, progress: Progress | None = None,
                  allow_unsigned: bool = False, source: str = "") -> ImportResult:
    """Verify and import the bundle (directory or tar) at ``path`` (blocking; use a thread).

    ``source`` is what the bundle is recorded as coming from (default: ``path``); an upload
    names the file the operator sent, not its temporary copy.
    """
    src = open_source(path)
    try:
        return _import(data_dir, src, progress=progress, allow_unsigned=allow_unsigned,
                       source=source or src.name)
    finally:
        src.close()


def _import(data_dir: Path, src: BundleSource, *, progress: Progress | None,
            allow_unsigned: bool, source: str) -> ImportResult:
    manifest, raw = read_manifest(src)
    manifest_digest = "sha256:" + hashlib.sha256(raw).hexdigest()
    by_path = {f.path: f for f in manifest.files}
    for required in ("oci-layout", "index.json"):
        if required not in by_path:
            raise BundleInvalid(f"{BUNDLE_MANIFEST} does not list {required}")
    conn = open_sync(data_dir)
    try:
        signer = check_signature(conn, src, raw, allow_unsigned=allow_unsigned)
        index_bytes = _read_verified(src, by_path["index.json"], MAX_INDEX_BYTES)
        _read_verified(src, by_path["oci-layout"], 4096)
        row = conn.execute("SELECT id FROM bundles WHERE manifest_digest=?",
                           (manifest_digest,)).fetchone()
        if row is not None:
            return ImportResult(bundle_id=row["id"], name=manifest.name,
                                version=manifest.version, models=[], bytes_copied=0,
                                bytes_skipped=0, already_imported=True, signed_by=signer)
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
            opener = _opener(src, f)

            def step(n: int) -> None:
                nonlocal done
                done += n
                if progress:
                    progress(done, total)
            store.copy_in(opener, "sha256:" + f.sha256, f.size, step)
        index = _parse_index(index_bytes)
        models = _models(store, index, by_path)
        images = _images(store, index, by_path)
        databases = _scanner_databases(store, index, by_path)
        analyses = _analyse(conn, store, models, databases)
        bundle_id = "bnd_" + uuid.uuid4().hex[:12]
        _record(conn, store, manifest, manifest_digest, source, bundle_id, signer, models,
                images, analyses, databases)
        return ImportResult(bundle_id=bundle_id, name=manifest.name, version=manifest.version,
                            models=[m[0].name for m in models], bytes_copied=need,
                            bytes_skipped=total - need, signed_by=signer,
                            images=[f"{i.repository}:{i.tag}" for i in images
                                    if not i.repository.startswith("models/")])
    finally:
        conn.close()


def verify_bundle(path: Path, *, trusted: dict[str, Any], allow_unsigned: bool = False,
                  progress: Progress | None = None) -> tuple[BundleManifest, str | None]:
    """Check the signature and every file's sha256 without importing anything."""
    src = open_source(path)
    try:
        manifest, raw = read_manifest(src)
        sig = read_small(src, SIGNATURE_FILE, MAX_SIGNATURE_BYTES)
        try:
            signer: str | None = verify_manifest(raw, sig, trusted)
        except SignatureError as exc:
            if not allow_unsigned or "does not match" in exc.message:
                raise
            signer = None
        total, done = manifest.total_size, 0
        for f in manifest.files:
            hasher = hashlib.sha256()
            with closing(_opener(src, f)(0)) as reader:
                while block := reader.read(CHUNK):
                    hasher.update(block)
                    done += len(block)
                    if progress:
                        progress(done, total)
            if hasher.hexdigest() != f.sha256:
                raise BundleInvalid(f"{f.path} does not match its sha256 in {BUNDLE_MANIFEST}")
        return manifest, signer
    finally:
        src.close()


def _parse_index(index_bytes: bytes) -> OciIndex:
    try:
        return msgspec.json.decode(index_bytes, type=OciIndex)
    except msgspec.DecodeError as exc:
        raise BundleInvalid(f"index.json is malformed: {exc}") from None


class ImageRecord(msgspec.Struct):
    repository: str
    tag: str
    digest: str
    media_type: str
    manifests: list[tuple[str, str, int]]  # (digest, media type, size): the top one, children
    blobs: list[str] = []  # configs and layers of those manifests: what /blobs/ serves for it


def _images(store: BlobStore, index: OciIndex, by_path: dict[str, BundleFile]
            ) -> list[ImageRecord]:
    """Every container image (and every model, as ``models/<name>``) the registry will serve."""
    found = []
    for desc in index.manifests:
        kind = desc.annotations.get(KIND, "")
        if kind not in ("image", "model"):
            continue
        ref = desc.annotations.get(REF_NAME, "")
        try:
            repo, tag = split_name(ref if kind == "image" else f"models/{ref.lower()}")
        except BadRequest as exc:
            if kind == "model":
                continue  # a model name the registry grammar cannot carry: not served there
            raise BundleInvalid(f"index.json: {exc.message}") from None
        manifests: list[tuple[str, str, int]] = []
        blobs: dict[str, None] = {}
        _image_tree(store, by_path, desc.digest, desc.mediaType, manifests, blobs, ref,
                    platform=desc.annotations.get(PLATFORM, ""))
        found.append(ImageRecord(repository=repo, tag=tag, digest=desc.digest,
                                 media_type=desc.mediaType, manifests=manifests,
                                 blobs=list(blobs)))
    return found


def _image_tree(store: BlobStore, by_path: dict[str, BundleFile], digest: str,
                media_type: str, out: list[tuple[str, str, int]], blobs: dict[str, None],
                ref: str, *, platform: str = "") -> None:
    """Record a manifest and its children in ``out``, their configs and layers in ``blobs``.

    Each must be in the bundle.

    ``platform`` marks an index pulled from a registry that carries one platform's manifest
    only: its other children are served as unknown (the index itself stays verbatim).
    """
    if not DIGEST_RE.match(digest) or blob_path(digest) not in by_path:
        raise BundleInvalid(f"image {ref}: manifest {digest} is not in the bundle")
    raw = store.path(digest).read_bytes()
    try:
        doc = msgspec.json.decode(raw, type=ImageDocument)
    except msgspec.DecodeError as exc:
        raise BundleInvalid(f"image {ref}: manifest {digest} is malformed: {exc}") from None
    out.append((digest, media_type or media_type_of(raw), len(raw)))
    if len(out) > 1000:
        raise BundleInvalid(f"image {ref}: too many nested manifests")
    children = doc.manifests
    if platform and children:
        children = [c for c in children
                    if DIGEST_RE.match(c.digest) and blob_path(c.digest) in by_path]
        if not children:
            raise BundleInvalid(f"image {ref}: the index's {platform} manifest is not in "
                                "the bundle")
    for child in children:
        _image_tree(store, by_path, child.digest, child.mediaType, out, blobs, ref)
    for blob in [*([doc.config] if doc.config else []), *doc.layers]:
        if not DIGEST_RE.match(blob.digest) or blob_path(blob.digest) not in by_path:
            raise BundleInvalid(f"image {ref}: blob {blob.digest} is not in the bundle")
        blobs[blob.digest] = None


def _scanner_databases(store: BlobStore, index: OciIndex, by_path: dict[str, BundleFile]
                       ) -> dict[str, str]:
    """ClamAV signature databases carried as plain files: {file name: digest}."""
    found: dict[str, str] = {}
    for desc in index.manifests:
        if desc.annotations.get(KIND) != "file" or blob_path(desc.digest) not in by_path:
            continue
        try:
            manifest = msgspec.json.decode(store.path(desc.digest).read_bytes(),
                                           type=OciManifest)
        except (msgspec.DecodeError, FileNotFoundError) as exc:
            raise BundleInvalid(f"file manifest {desc.digest} is unreadable: {exc}") from None
        for layer in manifest.layers:
            title = layer.annotations.get(TITLE, "")
            name = title.rsplit("/", 1)[-1]
            if name.lower().endswith(CLAMAV_SUFFIXES) and blob_path(layer.digest) in by_path:
                found[name] = layer.digest
    return found


def _analyse(conn: sqlite3.Connection, store: BlobStore,
             models: list[tuple[ModelConfig, str, dict[str, str], int]],
             databases: dict[str, str]) -> list[dict[str, Any]]:
    """Metadata, licence and scans of each model; raise when one must be refused."""
    known = {r["name"]: r["digest"] for r in conn.execute(
        "SELECT name, digest FROM scanner_databases ORDER BY added_at")}
    dbs = {name: store.path(digest) for name, digest in {**known, **databases}.items()}
    out = []
    for config, _, files, _ in models:
        paths = {rel: store.path(digest) for rel, digest in files.items()}
        try:
            meta = extract(paths)
        except HeaderInvalid as exc:
            raise ModelRefused(f"model {config.name} refused: {exc.message}") from None
        out.append({"metadata": meta, "licence": detect_licence(paths, meta),
                    "scan": scan_model(config.name, paths, dbs)})
    return out


def _models(store: BlobStore, index: OciIndex, by_path: dict[str, BundleFile]
            ) -> list[tuple[ModelConfig, str, dict[str, str], int]]:
    """(config, version, {file: digest}, size) for every model artefact in the index."""
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


def _record(conn: sqlite3.Connection, store: BlobStore, manifest: BundleManifest,
            manifest_digest: str, source: str, bundle_id: str, signer: str | None,
            models: list[tuple[ModelConfig, str, dict[str, str], int]],
            images: list[ImageRecord], analyses: list[dict[str, Any]],
            databases: dict[str, str]) -> None:
    """Make the bundle's contents visible: one transaction, after every blob verified."""
    now = time.time()
    conn.execute("BEGIN IMMEDIATE")
    try:
        check_blobs_present(conn, store, [("sha256:" + f.sha256, f.size) for f in manifest.files
                                          if f.path.startswith("blobs/")])
        conn.execute("INSERT INTO bundles (id, name, version, created, manifest_digest,"
                     " source_path, imported_at, signed_by) VALUES (?,?,?,?,?,?,?,?)",
                     (bundle_id, manifest.name, manifest.version, manifest.created,
                      manifest_digest, source, now, signer))
        for f in manifest.files:
            if f.path.startswith("blobs/"):
                digest = "sha256:" + f.sha256
                conn.execute("INSERT OR IGNORE INTO blobs VALUES (?,?,?)", (digest, f.size, now))
                conn.execute("INSERT OR IGNORE INTO blob_refs VALUES (?,?)", (digest, bundle_id))
        for name, digest in databases.items():
            conn.execute("INSERT OR IGNORE INTO scanner_databases VALUES (?,?,?,?)",
                         (name, digest, bundle_id, now))
        for (config, version, files, size), analysis in zip(models, analyses, strict=True):
            existing = conn.execute("SELECT id FROM models WHERE name=? AND version=?",
                                    (config.name, version)).fetchone()
            if existing is not None:
                conn.execute("UPDATE models SET active=0 WHERE name=?", (config.name,))
                conn.execute("UPDATE models SET active=1 WHERE id=?", (existing["id"],))
                continue
            conn.execute("UPDATE models SET active=0 WHERE name=?", (config.name,))
            conn.execute(
                "INSERT INTO models (id, name, version, task, format, files, size, metadata,"
                " bundle_id, created_at, active, licence, scan)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,1,?,?)",
                ("mdl_" + uuid.uuid4().hex[:12], config.name, version, config.task,
                 config.format, json.dumps(files), size,
                 json.dumps({"source": config.source, **analysis["metadata"]}),
                 bundle_id, now, json.dumps(analysis["licence"]), json.dumps(analysis["scan"])))
        for image in images:
            for digest, media_type, size in image.manifests:
                conn.execute("INSERT OR IGNORE INTO image_manifests VALUES (?,?,?,?,?)",
                             (image.repository, digest, media_type, size, bundle_id))
            conn.executemany("INSERT OR IGNORE INTO image_blobs VALUES (?,?,?)",
                             [(image.repository, digest, bundle_id) for digest in image.blobs])
            conn.execute("INSERT OR REPLACE INTO image_tags VALUES (?,?,?,?,?,?)",
                         (image.repository, image.tag, image.digest, image.media_type,
                          bundle_id, now))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def check_bundle_dir(path: Path) -> Path:
    """Resolve a user-given bundle path (a directory or a tar) or raise BadRequest."""
    resolved = path.expanduser().resolve()
    if not resolved.exists():
        raise BadRequest(f"{path} does not exist")
    return resolved
