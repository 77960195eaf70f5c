"""Pull a container image from a registry through the OCI distribution API (connected side).

``registry:HOST[:PORT]/REPO:TAG`` or ``registry:HOST[:PORT]/REPO@sha256:…``: the manifest is
fetched with an ``Accept`` for OCI and Docker manifests and indexes; an index is kept (the
appliance serves it verbatim) and followed to its ``linux/amd64`` manifest, the only child
carried. Every manifest, config and layer is checked against its digest while it streams to
disk, layers into a content-addressed cache under the sources cache (reused by later runs).
Anonymous token auth (401 + ``WWW-Authenticate: Bearer realm=…``) is supported; HTTPS is the
default and plain HTTP needs ``insecure = true`` on the recipe's image entry.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import sys
from pathlib import Path

import aiohttp
import msgspec

from appliance.bundle.format import DIGEST_RE
from appliance.bundle.images import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    INDEX_TYPES,
    MANIFEST_TYPES,
    MAX_DOC_BYTES,
    OCI_IMAGE_INDEX,
    OCI_IMAGE_MANIFEST,
    REPOSITORY_RE,
    TAG_RE,
    Image,
    ImageDocument,
    Opener,
    media_type_of,
)
from appliance.kernel.errors import BadRequest

PLATFORM = ("linux", "amd64")
ACCEPT = ", ".join([OCI_IMAGE_INDEX, DOCKER_LIST, OCI_IMAGE_MANIFEST, DOCKER_MANIFEST])
CHUNK = 1024 * 1024
DOCKER_HUB = {"docker.io": "registry-1.docker.io", "index.docker.io": "registry-1.docker.io"}
_PARAM_RE = re.compile(r'(\w+)="([^"]*)"')


class RegistryRef(msgspec.Struct, frozen=True):
    host: str  # HOST[:PORT] as written
    repository: str
    reference: str  # a tag or a sha256 digest

    def __str__(self) -> str:
        sep = "@" if self.reference.startswith("sha256:") else ":"
        return f"{self.host}/{self.repository}{sep}{self.reference}"


class _Platform(msgspec.Struct, forbid_unknown_fields=False):
    os: str = ""
    architecture: str = ""
    variant: str = ""


class _Child(msgspec.Struct, forbid_unknown_fields=False):
    mediaType: str = ""
    digest: str = ""
    size: int = 0
    platform: _Platform | None = None


class _Index(msgspec.Struct, forbid_unknown_fields=False):
    manifests: list[_Child] = []


def parse_reference(text: str) -> RegistryRef:
    """``HOST[:PORT]/REPO[:TAG|@sha256:HEX]`` → its parts; the tag defaults to ``latest``."""
    host, sep, path = text.partition("/")
    if not sep or not host or not path or host.startswith(("http:", "https:")):
        raise BadRequest(f"image source registry:{text}: expected "
                         "registry:HOST[:PORT]/REPOSITORY:TAG or …/REPOSITORY@sha256:DIGEST")
    if "@" in path:
        repo, _, reference = path.partition("@")
        if not DIGEST_RE.match(reference):
            raise BadRequest(f"image source registry:{text}: {reference!r} is not a sha256 "
                             "digest (sha256: and 64 hex digits)")
    else:
        repo, sep, reference = path.rpartition(":")
        if not sep:
            repo, reference = path, "latest"
        if not TAG_RE.match(reference):
            raise BadRequest(f"image source registry:{text}: {reference!r} is not a valid tag")
    if host in DOCKER_HUB and "/" not in repo:
        repo = "library/" + repo
    if not REPOSITORY_RE.match(repo):
        raise BadRequest(f"image source registry:{text}: {repo!r} is not a valid repository "
                         "name (lower case, digits, separators . _ - and /)")
    return RegistryRef(host=host, repository=repo, reference=reference)


def pull_image(text: str, *, insecure: bool = False, cache: Path) -> Image:
    """Download the image named by ``registry:TEXT`` (blocking; runs its own event loop)."""
    ref = parse_reference(text)
    scheme = "http" if insecure else "https"
    print(f"connected side: downloading image {ref} from the registry ({scheme})",
          file=sys.stderr)
    return asyncio.run(_pull(ref, scheme=scheme, cache=cache))


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class _Registry:
    """One registry, one repository: GETs with anonymous bearer-token auth on demand."""

    def __init__(self, session: aiohttp.ClientSession, ref: RegistryRef, scheme: str) -> None:
        self.session = session
        self.ref = ref
        host = DOCKER_HUB.get(ref.host, ref.host)
        self.base = f"{scheme}://{host}/v2/{ref.repository}"
        self.token = ""

    async def get(self, path: str, accept: str = "") -> aiohttp.ClientResponse:
        for attempt in range(2):
            headers = {"Accept": accept} if accept else {}
            if self.token:
                headers["Authorization"] = f"Bearer {self.token}"
            try:
                resp = await self.session.get(f"{self.base}/{path}", headers=headers)
            except aiohttp.ClientSSLError as exc:
                raise BadRequest(f"registry {self.ref.host}: TLS failed ({exc}); for a "
                                 "plain-HTTP registry set insecure = true on the image") from None
            except (aiohttp.ClientError, OSError) as exc:
                raise BadRequest(f"cannot reach registry {self.ref.host}: {exc}") from None
            if resp.status != 401 or attempt:
                return resp
            challenge = resp.headers.get("WWW-Authenticate", "")
            resp.release()
            await self._login(challenge)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _login(self, challenge: str) -> None:
        scheme, _, params = challenge.partition(" ")
        if scheme.lower() != "bearer":
            raise BadRequest(f"registry {self.ref.host} asks for credentials "
                             f"({challenge or 'no challenge'}); only anonymous pulls "
                             "(token auth) are supported")
        values = dict(_PARAM_RE.findall(params))
        realm = values.get("realm", "")
        if not realm.startswith(("http://", "https://")):
            raise BadRequest(f"registry {self.ref.host}: bad token challenge {challenge!r}")
        query = {"scope": values.get("scope", f"repository:{self.ref.repository}:pull")}
        if "service" in values:
            query["service"] = values["service"]
        try:
            async with self.session.get(realm, params=query) as resp:
                if resp.status != 200:
                    raise BadRequest(f"registry {self.ref.host}: the token service {realm} "
                                     f"answered {resp.status} to an anonymous request; the "
                                     "image may need credentials (not supported)")
                body = await resp.json(content_type=None)
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            raise BadRequest(f"registry {self.ref.host}: token service {realm}: {exc}") from None
        token = body.get("token") or body.get("access_token") if isinstance(body, dict) else ""
        if not token:
            raise BadRequest(f"registry {self.ref.host}: the token service gave no token")
        self.token = str(token)

    async def _detail(self, resp: aiohttp.ClientResponse) -> str:
        text = (await resp.content.read(4096)).decode(errors="replace")
        resp.release()
        try:
            errors = msgspec.json.decode(text).get("errors") or []
            return "; ".join(f"{e.get('code', '')}: {e.get('message', '')}" for e in errors)
        except (msgspec.DecodeError, AttributeError, TypeError):
            return text.strip()[:300]

    async def failure(self, resp: aiohttp.ClientResponse, what: str) -> BadRequest:
        detail = await self._detail(resp)
        if resp.status == 401:
            return BadRequest(f"registry {self.ref.host} refused {what}: unauthorized "
                              f"({detail}); only anonymous pulls are supported")
        return BadRequest(f"registry {self.ref.host}: {what}: HTTP {resp.status} {detail}")

    async def manifest(self, reference: str, accept: str = ACCEPT) -> tuple[bytes, str, str]:
        """(bytes, media type, digest) of a manifest or index, its digest verified."""
        resp = await self.get(f"manifests/{reference}", accept)
        if resp.status == 404:
            detail = await self._detail(resp)
            raise BadRequest(f"registry {self.ref.host} has no image "
                             f"{RegistryRef(self.ref.host, self.ref.repository, reference)} "
                             f"(unknown tag or repository: {detail or 'HTTP 404'})")
        if resp.status != 200:
            raise await self.failure(resp, f"manifest {reference}")
        async with resp:
            raw = await resp.content.read(MAX_DOC_BYTES + 1)
            if len(raw) > MAX_DOC_BYTES:
                raise BadRequest(f"registry {self.ref.host}: manifest {reference} is too large")
            digest = _sha(raw)
            claimed = resp.headers.get("Docker-Content-Digest", "")
            media_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
        expected = reference if reference.startswith("sha256:") else claimed
        if expected and expected != digest:
            raise BadRequest(f"registry {self.ref.host}: manifest {reference} does not match "
                             f"its digest ({expected}, got {digest}); refused")
        try:
            doc_type = media_type_of(raw)
        except BadRequest as exc:
            raise BadRequest(f"registry {self.ref.host}: manifest {reference}: "
                             f"{exc.message}") from None
        if media_type not in INDEX_TYPES | MANIFEST_TYPES:
            media_type = doc_type
        return raw, media_type, digest

    async def small_blob(self, digest: str) -> bytes:
        resp = await self.get(f"blobs/{digest}")
        if resp.status != 200:
            raise await self.failure(resp, f"blob {digest}")
        async with resp:
            raw = await resp.content.read(MAX_DOC_BYTES + 1)
        if len(raw) > MAX_DOC_BYTES:
            raise BadRequest(f"registry {self.ref.host}: config {digest} is too large")
        if _sha(raw) != digest:
            raise BadRequest(f"registry {self.ref.host}: blob {digest} does not match its "
                             "digest; refused")
        return raw

    async def blob_to(self, digest: str, size: int, dest: Path) -> None:
        """Stream a blob into ``dest``, hashing as it goes; nothing lands when it mismatches."""
        partial = dest.with_name(dest.name + ".partial")
        resp = await self.get(f"blobs/{digest}")
        if resp.status != 200:
            raise await self.failure(resp, f"blob {digest}")
        hasher = hashlib.sha256()
        got = 0
        try:
            async with resp:
                with partial.open("wb") as out:
                    async for block in resp.content.iter_chunked(CHUNK):
                        hasher.update(block)
                        out.write(block)
                        got += len(block)
                        if size and got > size:
                            break
        except (aiohttp.ClientError, OSError) as exc:
            partial.unlink(missing_ok=True)
            raise BadRequest(f"registry {self.ref.host}: blob {digest} download failed: "
                             f"{exc}") from None
        if "sha256:" + hasher.hexdigest() != digest or (size and got != size):
            partial.unlink(missing_ok=True)
            raise BadRequest(f"registry {self.ref.host}: blob {digest} does not match its "
                             f"digest (received {got} bytes, expected {size}); refused")
        os.replace(partial, dest)


def _platform_child(index: bytes, ref: RegistryRef) -> _Child:
    try:
        children = msgspec.json.decode(index, type=_Index).manifests
    except msgspec.DecodeError as exc:
        raise BadRequest(f"image {ref}: the index is malformed: {exc}") from None
    for child in children:
        p = child.platform
        if p is not None and (p.os, p.architecture) == PLATFORM:
            return child
    found = sorted(f"{c.platform.os}/{c.platform.architecture}" for c in children
                   if c.platform is not None)
    raise BadRequest(f"image {ref} has no {'/'.join(PLATFORM)} manifest "
                     f"(platforms: {', '.join(found) or 'none'})")


async def _pull(ref: RegistryRef, *, scheme: str, cache: Path) -> Image:
    blobs_dir = cache / "blobs" / "sha256"
    blobs_dir.mkdir(parents=True, exist_ok=True)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=300)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        registry = _Registry(session, ref, scheme)
        raw, media_type, top_digest = await registry.manifest(ref.reference)
        documents = {top_digest: raw}
        top_type = media_type
        extra: dict[str, str] = {}
        if media_type in INDEX_TYPES:
            child = _platform_child(raw, ref)
            if not DIGEST_RE.match(child.digest):
                raise BadRequest(f"image {ref}: bad child digest {child.digest!r}")
            raw, media_type, digest = await registry.manifest(
                child.digest, child.mediaType or ACCEPT)
            if media_type not in MANIFEST_TYPES:
                raise BadRequest(f"image {ref}: the {'/'.join(PLATFORM)} entry is not an "
                                 f"image manifest ({media_type})")
            documents[digest] = raw
            extra["platform"] = "/".join(PLATFORM)
        doc = msgspec.json.decode(raw, type=ImageDocument)
        if doc.config is None:
            raise BadRequest(f"image {ref}: the manifest names no config")
        for desc in [doc.config, *doc.layers]:
            if not DIGEST_RE.match(desc.digest):
                raise BadRequest(f"image {ref}: bad digest {desc.digest!r}")
        documents[doc.config.digest] = await registry.small_blob(doc.config.digest)
        blobs: dict[str, tuple[int, Opener]] = {}
        for layer in doc.layers:
            path = blobs_dir / layer.digest[7:]
            if not path.is_file():
                await registry.blob_to(layer.digest, layer.size, path)
            blobs[layer.digest] = (path.stat().st_size, _opener(path))
    return Image(media_type=top_type, digest=top_digest, size=len(documents[top_digest]),
                 documents=documents, blobs=blobs, platform=extra.get("platform", ""))


def _opener(path: Path) -> Opener:
    return lambda: path.open("rb")
