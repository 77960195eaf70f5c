"""Connected side: build a bundle directory from a recipe."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.bundle.format import (
    BUNDLE_MANIFEST,
    EMPTY_CONFIG,
    FILE_ARTIFACT,
    FORMAT_VERSION,
    KIND,
    MODEL_ARTIFACT,
    MODEL_CONFIG,
    MODEL_LAYER,
    OCI_MANIFEST,
    PLATFORM,
    REF_NAME,
    TITLE,
    BundleEntry,
    BundleFile,
    BundleManifest,
    BundlePart,
    Descriptor,
    ModelConfig,
    OciIndex,
    OciManifest,
    blob_path,
)
from appliance.bundle.images import Image, Opener, resolve_image, split_name
from appliance.bundle.parts import part_name
from appliance.bundle.pull import parse_reference
from appliance.bundle.recipe import Recipe, RecipeFile, RecipeModel, resolve_source
from appliance.bundle.signing import SIGNATURE_FILE, sign_manifest
from appliance.kernel.errors import BadRequest
from appliance.models.detect import detect

CHUNK = 4 * 1024 * 1024
Progress = Callable[[str, int], None]  # (what, bytes just done)


class _Writer:
    """Writes blobs into a layout under construction, once per digest."""

    def __init__(self, root: Path, progress: Progress | None, part_size: int = 0) -> None:
        self.root = root
        self.progress = progress
        self.part_size = part_size
        self.parts: dict[str, list[BundlePart]] = {}  # digest -> parts of split blobs
        (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)

    def add_file(self, src: Path | Opener, label: str, size: int = -1) -> tuple[str, int]:
        opener = (lambda: src.open("rb")) if isinstance(src, Path) else src
        if isinstance(src, Path):
            size = src.stat().st_size
        if self.part_size and size > self.part_size:
            return self._add_split(opener, label)
        tmp = self.root / "blobs" / ".tmp"
        hasher = hashlib.sha256()
        size = 0
        with opener() as reader, tmp.open("wb") as writer:
            while block := reader.read(CHUNK):
                hasher.update(block)
                writer.write(block)
                size += len(block)
                if self.progress:
                    self.progress(label, len(block))
        digest = "sha256:" + hasher.hexdigest()
        os.replace(tmp, self.root / blob_path(digest))
        return digest, size

    def _add_split(self, opener: Opener, label: str) -> tuple[str, int]:
        """Write ``src`` straight into parts of at most ``part_size`` bytes (FAT32 media)."""
        whole = hashlib.sha256()
        pieces: list[tuple[Path, str, int]] = []
        size = 0
        with opener() as reader:
            while True:
                tmp = self.root / "blobs" / f".tmp.{len(pieces) + 1}"
                hasher = hashlib.sha256()
                written = 0
                with tmp.open("wb") as writer:
                    while written < self.part_size:
                        block = reader.read(min(CHUNK, self.part_size - written))
                        if not block:
                            break
                        whole.update(block)
                        hasher.update(block)
                        writer.write(block)
                        written += len(block)
                        if self.progress:
                            self.progress(label, len(block))
                if not written:
                    tmp.unlink()
                    break
                pieces.append((tmp, hasher.hexdigest(), written))
                size += written
        digest = "sha256:" + whole.hexdigest()
        parts = []
        for number, (tmp, sha, written) in enumerate(pieces, 1):
            rel = part_name(blob_path(digest), number)
            os.replace(tmp, self.root / rel)
            parts.append(BundlePart(path=rel, size=written, sha256=sha))
        self.parts[digest] = parts
        return digest, size

    def add_bytes(self, data: bytes) -> tuple[str, int]:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        (self.root / blob_path(digest)).write_bytes(data)
        return digest, len(data)


def _artifact(writer: _Writer, *, artifact_type: str, config: bytes, config_type: str,
              layers: list[Descriptor], ref: str, kind: str) -> Descriptor:
    cdigest, csize = writer.add_bytes(config)
    manifest = OciManifest(schemaVersion=2, mediaType=OCI_MANIFEST, artifactType=artifact_type,
                           config=Descriptor(mediaType=config_type, digest=cdigest, size=csize),
                           layers=layers)
    mdigest, msize = writer.add_bytes(msgspec.json.encode(manifest))
    return Descriptor(mediaType=OCI_MANIFEST, digest=mdigest, size=msize,
                      artifactType=artifact_type, annotations={REF_NAME: ref, KIND: kind})


def _add_image(writer: _Writer, image: Image, ref: str) -> Descriptor:
    """Copy an image's blobs into the bundle, checking each one's digest as it goes."""
    for digest, doc in image.documents.items():
        if writer.add_bytes(doc)[0] != digest:  # pragma: no cover - checked when read
            raise BadRequest(f"image {ref}: blob {digest} does not match its digest")
    for digest, (size, opener) in image.blobs.items():
        got, _ = writer.add_file(opener, f"{ref} {digest[7:19]}", size)
        if got != digest:
            raise BadRequest(f"image {ref}: layer {digest} does not match its digest; the "
                             "source is damaged")
    annotations = {REF_NAME: ref, KIND: "image"}
    if image.platform:
        annotations[PLATFORM] = image.platform
    return Descriptor(mediaType=image.media_type, digest=image.digest, size=image.size,
                      annotations=annotations)


def source_sizes(recipe: Recipe) -> tuple[dict[str, dict[str, Path]], int]:
    """Resolve every source (downloads on the connected side) and add up the bytes."""
    resolved: dict[str, dict[str, Path]] = {}
    total = 0
    items: list[RecipeModel | RecipeFile] = [*recipe.models, *recipe.files]
    for item in items:
        files = resolve_source(item.source)
        resolved[item.source] = files
        total += sum(p.stat().st_size for p in files.values())
    for image in recipe.images:
        split_name(image.name)
        scheme, _, rest = image.source.partition(":")
        if scheme == "registry":
            parse_reference(rest)  # a bad reference fails before anything is downloaded
    return resolved, total


def create_bundle(recipe: Recipe, out: Path, *, progress: Progress | None = None,
                  resolved: dict[str, dict[str, Path]] | None = None,
                  sign_key: Ed25519PrivateKey | None = None,
                  part_size: int = 0) -> BundleManifest:
    """Build the bundle in ``OUT.partial`` and rename it to ``out`` when complete.

    With ``sign_key`` the manifest's exact bytes are signed into ``bundle.json.sig``; with
    ``part_size`` blobs larger than it are written as parts (for FAT32 media).
    """
    if out.exists() and any(out.iterdir()):
        raise BadRequest(f"{out} exists and is not empty; choose a new --out directory")
    resolved = resolved or source_sizes(recipe)[0]
    work = out.with_name(out.name + ".partial")
    shutil.rmtree(work, ignore_errors=True)
    writer = _Writer(work, progress, part_size)
    descriptors: list[Descriptor] = []
    contents: list[BundleEntry] = []
    for model in recipe.models:
        files = resolved[model.source]
        fmt, task = detect(files, task=model.task)
        version = model.version or recipe.version
        layers = []
        for rel, path in sorted(files.items()):
            digest, size = writer.add_file(path, f"{model.name}/{rel}")
            layers.append(Descriptor(mediaType=MODEL_LAYER, digest=digest, size=size,
                                     annotations={TITLE: rel}))
        config = msgspec.json.encode(ModelConfig(name=model.name, task=task, format=fmt,
                                                 files=sorted(files), source=model.source))
        desc = _artifact(writer, artifact_type=MODEL_ARTIFACT, config=config,
                         config_type=MODEL_CONFIG, layers=layers,
                         ref=f"{model.name}:{version}", kind="model")
        descriptors.append(desc)
        contents.append(BundleEntry(kind="model", name=model.name, version=version,
                                    manifest=desc.digest))
    for item in recipe.files:
        files = resolved[item.source]
        layers = []
        for rel, path in sorted(files.items()):
            digest, size = writer.add_file(path, f"{item.name}/{rel}")
            layers.append(Descriptor(mediaType="application/octet-stream", digest=digest,
                                     size=size, annotations={TITLE: rel}))
        desc = _artifact(writer, artifact_type=FILE_ARTIFACT, config=b"{}",
                         config_type=EMPTY_CONFIG, layers=layers,
                         ref=f"{item.name}:{recipe.version}", kind="file")
        descriptors.append(desc)
        contents.append(BundleEntry(kind="file", name=item.name, version=recipe.version,
                                    manifest=desc.digest))
    for image in recipe.images:
        repo, tag = split_name(image.name)
        resolved_image = resolve_image(image.source, insecure=image.insecure)
        try:
            descriptors.append(_add_image(writer, resolved_image, f"{repo}:{tag}"))
        finally:
            resolved_image.close()
        contents.append(BundleEntry(kind="image", name=repo, version=tag,
                                    manifest=resolved_image.digest))
    (work / "oci-layout").write_bytes(b'{"imageLayoutVersion":"1.0.0"}')
    (work / "index.json").write_bytes(msgspec.json.encode(
        OciIndex(schemaVersion=2, manifests=descriptors)))
    listed: list[BundleFile] = []
    for path in sorted(work.rglob("*")):
        if path.is_file() and ".part" not in path.name:
            rel = str(path.relative_to(work))
            # a blob's name is its digest, already computed while writing it
            sha = path.name if rel.startswith("blobs/sha256/") else _sha256(path)
            listed.append(BundleFile(path=rel, size=path.stat().st_size, sha256=sha))
    for digest, parts in writer.parts.items():
        listed.append(BundleFile(path=blob_path(digest), size=sum(p.size for p in parts),
                                 sha256=digest.split(":", 1)[1], parts=parts))
    listed.sort(key=lambda f: f.path)
    manifest = BundleManifest(
        format=FORMAT_VERSION, name=recipe.name, version=recipe.version,
        created=dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), contents=contents,
        files=listed)
    manifest_bytes = msgspec.json.format(msgspec.json.encode(manifest))
    (work / BUNDLE_MANIFEST).write_bytes(manifest_bytes)
    if sign_key is not None:
        (work / SIGNATURE_FILE).write_bytes(sign_manifest(sign_key, manifest_bytes))
    if out.exists():
        out.rmdir()
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(work, out)
    return manifest


def _sha256(path: Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            hasher.update(block)
    return hasher.hexdigest()
