"""Container images for bundles (connected side): from an OCI layout, a ``docker save`` tar or a
registry (``registry:``, pulled through the OCI distribution API by ``appliance.bundle.pull``).

An image lands in the bundle's own OCI layout byte for byte (manifests, configs and layers
keep their digests); a ``docker save`` archive is turned into an OCI image manifest over its
uncompressed layer tars, whose digests its config's ``diff_ids`` already name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

import msgspec

from appliance.bundle.format import DIGEST_RE, REF_NAME, blob_path
from appliance.bundle.source import safe_member_name
from appliance.kernel.errors import BadRequest

OCI_IMAGE_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_IMAGE_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_IMAGE_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
INDEX_TYPES = {OCI_IMAGE_INDEX, DOCKER_LIST}
MANIFEST_TYPES = {OCI_IMAGE_MANIFEST, DOCKER_MANIFEST}
MAX_DOC_BYTES = 4 * 1024 * 1024
# the OCI distribution spec's grammar for repository names and tags
REPOSITORY_RE = re.compile(r"^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
                           r"(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$")
TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")

Opener = Callable[[], IO[bytes]]


class _Ref(msgspec.Struct, forbid_unknown_fields=False):
    mediaType: str = ""
    digest: str = ""
    size: int = 0
    annotations: dict[str, str] = {}


class ImageDocument(msgspec.Struct, forbid_unknown_fields=False):
    """The parts of an image manifest or index that name other blobs."""

    mediaType: str = ""
    schemaVersion: int = 2
    manifests: list[_Ref] = []
    config: _Ref | None = None
    layers: list[_Ref] = []


@dataclasses.dataclass(kw_only=True)
class Image:
    """An image ready to be written: its top manifest and every blob it reaches."""

    media_type: str
    digest: str
    size: int
    documents: dict[str, bytes]  # manifests, indexes and configs, by digest
    blobs: dict[str, tuple[int, Opener]]  # layers: digest -> (size, opener)
    close: Callable[[], None] = lambda: None
    platform: str = ""  # set when the top is an index carrying only this platform's manifest


def split_name(name: str) -> tuple[str, str]:
    """``library/busybox:1.0`` → (``library/busybox``, ``1.0``); the tag defaults to latest."""
    repo, sep, tag = name.rpartition(":")
    if not sep or "/" in tag:
        repo, tag = name, "latest"
    if not REPOSITORY_RE.match(repo) or len(repo) > 255:
        raise BadRequest(f"image name {name!r}: {repo!r} is not a valid repository name "
                         "(lower case, digits, separators . _ - and /)")
    if not TAG_RE.match(tag):
        raise BadRequest(f"image name {name!r}: {tag!r} is not a valid tag")
    return repo, tag


def media_type_of(doc: bytes) -> str:
    try:
        parsed = msgspec.json.decode(doc, type=ImageDocument)
    except msgspec.DecodeError as exc:
        raise BadRequest(f"not an image manifest: {exc}") from None
    if parsed.mediaType:
        return parsed.mediaType
    return OCI_IMAGE_INDEX if parsed.manifests else OCI_IMAGE_MANIFEST


def resolve_image(source: str, *, insecure: bool = False, cache: Path | None = None) -> Image:
    """``oci-layout:/path:tag``, ``docker-archive:/path.tar`` or ``registry:HOST/REPO:TAG``
    (downloaded over HTTPS, or plain HTTP when ``insecure``) → the image's blobs."""
    scheme, _, rest = source.partition(":")
    if scheme == "registry":
        from appliance.bundle.pull import pull_image
        from appliance.bundle.recipe import cache_dir

        return pull_image(rest, insecure=insecure, cache=cache or cache_dir())
    if scheme == "oci-layout":
        path, _, tag = rest.rpartition(":")
        if not path:
            path, tag = rest, ""
        return _from_layout(Path(path), tag)
    if scheme == "docker-archive":
        return _from_docker_archive(Path(rest))
    raise BadRequest(f"image source {source!r}: unknown scheme {scheme!r} "
                     "(use oci-layout:/path:tag, docker-archive:/path.tar or "
                     "registry:HOST[:PORT]/REPOSITORY:TAG)")


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _from_layout(root: Path, tag: str) -> Image:
    if not (root / "oci-layout").is_file() or not (root / "index.json").is_file():
        raise BadRequest(f"{root} is not an OCI image layout (no oci-layout or index.json)")
    index = msgspec.json.decode((root / "index.json").read_bytes(), type=ImageDocument)
    found = [m for m in index.manifests if not tag or m.annotations.get(REF_NAME) == tag]
    if not found:
        tags = sorted(m.annotations.get(REF_NAME, "") for m in index.manifests)
        raise BadRequest(f"{root} has no image tagged {tag!r} (tags: {', '.join(tags)})")
    if len(found) > 1:
        raise BadRequest(f"{root} holds several images; name one as oci-layout:{root}:TAG")
    top = found[0]

    def read_doc(digest: str) -> bytes:
        if not DIGEST_RE.match(digest):
            raise BadRequest(f"{root}: bad digest {digest!r}")
        path = root / blob_path(digest)
        if not path.is_file():
            raise BadRequest(f"{root} lacks blob {digest}; the layout is incomplete")
        data = path.read_bytes()
        if _sha(data) != digest:
            raise BadRequest(f"{root}: blob {digest} does not match its digest")
        return data

    def opener(digest: str) -> tuple[int, Opener]:
        if not DIGEST_RE.match(digest):
            raise BadRequest(f"{root}: bad digest {digest!r}")
        path = root / blob_path(digest)
        if not path.is_file():
            raise BadRequest(f"{root} lacks blob {digest}; the layout is incomplete")
        return path.stat().st_size, lambda: path.open("rb")

    documents: dict[str, bytes] = {}
    blobs: dict[str, tuple[int, Opener]] = {}
    _walk(top.digest, read_doc, opener, documents, blobs)
    raw = documents[top.digest]
    return Image(media_type=top.mediaType or media_type_of(raw), digest=top.digest,
                 size=len(raw), documents=documents, blobs=blobs)


def _walk(digest: str, read_doc: Callable[[str], bytes],
          opener: Callable[[str], tuple[int, Opener]], documents: dict[str, bytes],
          blobs: dict[str, tuple[int, Opener]]) -> None:
    raw = read_doc(digest)
    documents[digest] = raw
    doc = msgspec.json.decode(raw, type=ImageDocument)
    for child in doc.manifests:
        _walk(child.digest, read_doc, opener, documents, blobs)
    if doc.config is not None:
        documents[doc.config.digest] = read_doc(doc.config.digest)
    for layer in doc.layers:
        blobs[layer.digest] = opener(layer.digest)


def _from_docker_archive(path: Path) -> Image:
    """A ``docker save`` tar (one image): its config and layer tars become an OCI image."""
    try:
        tar = tarfile.open(path, "r:")
    except (OSError, tarfile.TarError) as exc:
        raise BadRequest(f"{path} is not a docker save archive: {exc}") from None
    members = {}
    for info in tar.getmembers():
        name = safe_member_name(info.name)
        if info.isreg():
            members[name] = info
        elif info.issym():  # older docker save links repeated layers
            target = safe_member_name(str(Path(name).parent / info.linkname))
            members.setdefault(name, members.get(target, info))

    def member(name: str) -> tarfile.TarInfo:
        info = members.get(safe_member_name(name))
        if info is None or not info.isreg():
            raise BadRequest(f"{path}: {name} is missing from the archive")
        return info

    def read(name: str) -> bytes:
        reader = tar.extractfile(member(name))
        assert reader is not None
        return reader.read(MAX_DOC_BYTES + 1)

    try:
        return _convert(tar, members, member, read, path)
    except BaseException:
        tar.close()
        raise


def _convert(tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo],
             member: Callable[[str], tarfile.TarInfo], read: Callable[[str], bytes],
             path: Path) -> Image:
    try:
        entries = json.loads(read("manifest.json"))
    except ValueError as exc:
        raise BadRequest(f"{path}: manifest.json is not JSON: {exc}") from None
    if not isinstance(entries, list) or len(entries) != 1:
        raise BadRequest(f"{path}: expected one image in manifest.json, found "
                         f"{len(entries) if isinstance(entries, list) else 'none'}")
    entry = entries[0]
    config = read(entry["Config"])
    documents = {_sha(config): config}
    blobs: dict[str, tuple[int, Opener]] = {}
    layers = []
    for name in entry["Layers"]:
        info = member(name)
        hasher = hashlib.sha256()
        reader = tar.extractfile(info)
        assert reader is not None
        head = b""
        while block := reader.read(4 * 1024 * 1024):
            head = head or block[:2]
            hasher.update(block)
        digest = "sha256:" + hasher.hexdigest()
        blobs[digest] = (info.size, _member_opener(tar, info))
        layers.append({"mediaType": OCI_LAYER_GZIP if head == b"\x1f\x8b" else OCI_LAYER,
                       "digest": digest, "size": info.size})
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_IMAGE_MANIFEST,
        "config": {"mediaType": OCI_IMAGE_CONFIG, "digest": _sha(config), "size": len(config)},
        "layers": layers}, separators=(",", ":")).encode()
    digest = _sha(manifest)
    documents[digest] = manifest
    return Image(media_type=OCI_IMAGE_MANIFEST, digest=digest, size=len(manifest),
                 documents=documents, blobs=blobs, close=tar.close)


def _member_opener(tar: tarfile.TarFile, info: tarfile.TarInfo) -> Opener:
    def open_member() -> IO[bytes]:
        reader = tar.extractfile(info)
        assert reader is not None
        return reader
    return open_member
