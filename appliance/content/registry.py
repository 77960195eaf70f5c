"""A read-only OCI distribution registry at ``/v2/``, served straight from the content store.

Manifests are the stored bytes, verbatim, with their stored media type and digest; blobs are
the content store's files sent with ``sendfile`` (``Range`` requests included). There is no
second copy and nothing to push: every write is answered 405 ``UNSUPPORTED``.

As in the distribution spec, blobs belong to repositories: a blob is served under a repository
only when one of its manifests (an index's child manifests included) names it as config or
layer (``image_blobs``, written by the bundle import), never just because the store holds it.

No authentication: the registry is read-only and meant for the site's own network, where the
cluster nodes pull from it (as containerd does from a mirror). Put the appliance behind a
firewall rule if other hosts must not read its images.

containerd asks a mirror for ``/v2/<name>/...?ns=<upstream registry>``; an image imported as
``docker.io/library/busybox:1.0`` is then found for ``ns=docker.io`` and ``library/busybox``,
and an image imported without a registry prefix answers for every ``ns``.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import msgspec
from aiohttp import web

from appliance.content.store import BlobStore
from appliance.store.state import StateStore

API_VERSION = {"Docker-Distribution-API-Version": "registry/2.0"}
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
MAX_PAGE = 1000
DEFAULT_MIRRORS = ("docker.io", "registry.k8s.io", "ghcr.io", "quay.io")
_encode = msgspec.json.Encoder().encode


class RegistryServices(Protocol):
    store: StateStore
    blobs: BlobStore


def oci_error(status: int, code: str, message: str, detail: Any = None) -> web.Response:
    """The OCI distribution error body: ``{"errors": [{"code", "message", "detail"}]}``."""
    body = {"errors": [{"code": code, "message": message, "detail": detail or {}}]}
    return web.Response(status=status, body=_encode(body), content_type="application/json",
                        headers=API_VERSION)


class Registry:
    """The views of ``/v2/``; reads the state store, sends files from the blob store."""

    def __init__(self, services: RegistryServices) -> None:
        self.s = services

    def candidates(self, request: web.Request, name: str) -> list[str]:
        """Repositories to look in: ``<ns>/<name>`` first when containerd names a registry."""
        ns = request.query.get("ns", "")
        if ns and re.match(r"^[A-Za-z0-9.-]+(:[0-9]+)?$", ns):
            return [f"{ns}/{name}", name]
        return [name]

    async def repository(self, request: web.Request, name: str) -> str | None:
        for repo in self.candidates(request, name):
            row = await self.s.store.fetchone(
                "SELECT 1 FROM image_tags WHERE repository=? UNION ALL "
                "SELECT 1 FROM image_manifests WHERE repository=? LIMIT 1", (repo, repo))
            if row is not None:
                return repo
        return None

    async def base(self, request: web.Request) -> web.Response:
        """``GET /v2/``: the API version check."""
        return web.Response(body=b"{}", content_type="application/json", headers=API_VERSION)

    async def manifest(self, request: web.Request) -> web.StreamResponse:
        """``GET|HEAD /v2/<name>/manifests/<tag|digest>``: the stored bytes, verbatim."""
        name, ref = request.match_info["name"], request.match_info["reference"]
        found = None
        for repo in self.candidates(request, name):
            if ref.startswith("sha256:"):
                if not DIGEST_RE.match(ref):
                    return oci_error(400, "DIGEST_INVALID", f"{ref!r} is not a sha256 digest")
                row = await self.s.store.fetchone(
                    "SELECT digest, media_type, size FROM image_manifests"
                    " WHERE repository=? AND digest=? LIMIT 1", (repo, ref))
            else:
                row = await self.s.store.fetchone(
                    "SELECT t.digest, t.media_type, m.size FROM image_tags t JOIN"
                    " image_manifests m ON m.repository=t.repository AND m.digest=t.digest"
                    " WHERE t.repository=? AND t.tag=? LIMIT 1", (repo, ref))
            if row is not None:
                found = row
                break
        if found is None:
            if await self.repository(request, name) is None:
                return oci_error(404, "NAME_UNKNOWN", f"repository {name} is not known here",
                                 {"name": name})
            return oci_error(404, "MANIFEST_UNKNOWN", f"manifest {ref} of {name} is not known "
                             "here", {"name": name, "reference": ref})
        digest, media_type = found["digest"], found["media_type"]
        headers = {**API_VERSION, "Docker-Content-Digest": digest, "ETag": f'"{digest}"'}
        if request.method == "HEAD":
            headers["Content-Length"] = str(found["size"])
            return web.Response(headers={**headers, "Content-Type": media_type})
        try:
            body = await asyncio.to_thread(self.s.blobs.path(digest).read_bytes)
        except FileNotFoundError:
            return oci_error(404, "MANIFEST_UNKNOWN", f"manifest {digest} is missing from the "
                             "content store", {"name": name, "reference": ref})
        return web.Response(body=body, headers={**headers, "Content-Type": media_type})

    async def blob(self, request: web.Request) -> web.StreamResponse:
        """``GET|HEAD /v2/<name>/blobs/<digest>``: the stored file, with ``Range`` support."""
        name, digest = request.match_info["name"], request.match_info["digest"]
        if not DIGEST_RE.match(digest):
            return oci_error(400, "DIGEST_INVALID", f"{digest!r} is not a sha256 digest")
        repos = self.candidates(request, name)
        # one primary-key lookup on the hot path; the repository is looked up only to tell
        # NAME_UNKNOWN from BLOB_UNKNOWN when the blob is not served
        row = await self.s.store.fetchone(
            "SELECT 1 FROM image_blobs i JOIN blobs b ON b.digest=i.digest WHERE i.repository"
            f" IN ({','.join('?' * len(repos))}) AND i.digest=? LIMIT 1", (*repos, digest))
        path = self.s.blobs.path(digest)
        if row is None or not await asyncio.to_thread(path.is_file):
            if await self.repository(request, name) is None:
                return oci_error(404, "NAME_UNKNOWN", f"repository {name} is not known here",
                                 {"name": name})
            return oci_error(404, "BLOB_UNKNOWN", f"blob {digest} is not known in {name}",
                             {"name": name, "digest": digest})
        return web.FileResponse(path, headers={
            **API_VERSION, "Docker-Content-Digest": digest, "ETag": f'"{digest}"',
            "Content-Type": "application/octet-stream",
            "Cache-Control": "max-age=31536000, immutable"})

    async def tags(self, request: web.Request) -> web.Response:
        """``GET /v2/<name>/tags/list`` (``n`` and ``last`` paginate)."""
        name = request.match_info["name"]
        repo = await self.repository(request, name)
        if repo is None:
            return oci_error(404, "NAME_UNKNOWN", f"repository {name} is not known here",
                             {"name": name})
        n, last = _page(request)
        if n is None:
            return oci_error(400, "PAGINATION_NUMBER_INVALID", "n must be a positive number")
        rows = await self.s.store.fetchall(
            "SELECT tag FROM image_tags WHERE repository=? AND tag>? ORDER BY tag LIMIT ?",
            (repo, last, n + 1))
        tags = [r["tag"] for r in rows]
        headers = dict(API_VERSION)
        if len(tags) > n:
            tags = tags[:n]
            headers["Link"] = f'</v2/{name}/tags/list?n={n}&last={tags[-1]}>; rel="next"'
        return web.Response(body=_encode({"name": name, "tags": tags}), headers=headers,
                            content_type="application/json")

    async def catalog(self, request: web.Request) -> web.Response:
        """``GET /v2/_catalog``: every repository (``n`` and ``last`` paginate)."""
        n, last = _page(request)
        if n is None:
            return oci_error(400, "PAGINATION_NUMBER_INVALID", "n must be a positive number")
        rows = await self.s.store.fetchall(
            "SELECT DISTINCT repository FROM image_tags WHERE repository>?"
            " ORDER BY repository LIMIT ?", (last, n + 1))
        repos = [r["repository"] for r in rows]
        headers = dict(API_VERSION)
        if len(repos) > n:
            repos = repos[:n]
            headers["Link"] = f'</v2/_catalog?n={n}&last={repos[-1]}>; rel="next"'
        return web.Response(body=_encode({"repositories": repos}), headers=headers,
                            content_type="application/json")

    async def unsupported(self, request: web.Request) -> web.Response:
        """Pushes, deletes and uploads: this registry is read-only."""
        return oci_error(405, "UNSUPPORTED", f"{request.method} is not supported: this "
                         "registry is read-only; images arrive in bundles")

    async def unknown(self, request: web.Request) -> web.Response:
        if request.method not in ("GET", "HEAD"):
            return await self.unsupported(request)
        return oci_error(404, "NAME_UNKNOWN", f"no such registry endpoint: {request.path}")

    # --- node configuration downloads (under /api, so they need an admin key) ---------------

    async def hosts_toml(self, request: web.Request) -> web.Response:
        """containerd ``certs.d/<registry>/hosts.toml`` pointing pulls at this appliance."""
        address = _address(request)
        upstream = request.query.get("registry", "")
        if upstream and not re.match(r"^[A-Za-z0-9.-]+(:[0-9]+)?$", upstream):
            return oci_error(400, "NAME_INVALID", f"bad registry name {upstream!r}")
        where = upstream or address
        server = f"https://{upstream}" if upstream else f"http://{address}"
        if upstream == "docker.io":
            server = "https://registry-1.docker.io"
        text = (f"# /etc/containerd/certs.d/{where}/hosts.toml\n"
                f"# pulls of {where}/* are served by the Foundry appliance at {address}\n"
                f'server = "{server}"\n\n'
                f'[host."http://{address}"]\n'
                '  capabilities = ["pull", "resolve"]\n')
        return web.Response(text=text, content_type="application/toml", headers={
            "Content-Disposition": 'attachment; filename="hosts.toml"'})

    async def registries_yaml(self, request: web.Request) -> web.Response:
        """k3s ``/etc/rancher/k3s/registries.yaml`` mirroring registries to this appliance."""
        address = _address(request)
        mirrors = request.query.getall("registry", []) or list(DEFAULT_MIRRORS)
        for m in mirrors:
            if not re.match(r"^[A-Za-z0-9.-]+(:[0-9]+)?$", m):
                return oci_error(400, "NAME_INVALID", f"bad registry name {m!r}")
        lines = ["# /etc/rancher/k3s/registries.yaml",
                 f"# image pulls are served by the Foundry appliance at {address}", "mirrors:"]
        for m in [address, *mirrors]:
            lines += [f'  "{m}":', "    endpoint:", f'      - "http://{address}"']
        return web.Response(text="\n".join(lines) + "\n", content_type="application/yaml",
                            headers={"Content-Disposition":
                                     'attachment; filename="registries.yaml"'})


def _page(request: web.Request) -> tuple[int | None, str]:
    try:
        n = int(request.query.get("n", str(MAX_PAGE)))
    except ValueError:
        return None, ""
    if n < 1:
        return None, ""
    return min(n, MAX_PAGE), request.query.get("last", "")


def _address(request: web.Request) -> str:
    """The appliance's address as nodes reach it: ``?host=`` or the request's Host."""
    host = request.query.get("host") or request.host
    if not re.match(r"^[A-Za-z0-9.\-\[\]:]+$", host):
        raise web.HTTPBadRequest(text="bad host")
    return host


def add_routes(app: web.Application, services: RegistryServices) -> Registry:
    """Register ``/v2/*`` and the node configuration downloads on ``app``."""
    registry = Registry(services)

    def read(path: str, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
             ) -> None:
        resource = app.router.add_resource(path)
        resource.add_route("GET", handler)
        resource.add_route("HEAD", handler)
        resource.add_route("*", registry.unsupported)

    read("/v2/", registry.base)
    read("/v2/_catalog", registry.catalog)
    read("/v2/{name:.+}/manifests/{reference}", registry.manifest)
    read("/v2/{name:.+}/blobs/{digest}", registry.blob)
    read("/v2/{name:.+}/tags/list", registry.tags)
    app.router.add_route("*", "/v2", registry.unknown)
    app.router.add_route("*", "/v2/{tail:.*}", registry.unknown)
    app.router.add_get("/api/registry/hosts.toml", registry.hosts_toml)
    app.router.add_get("/api/registry/registries.yaml", registry.registries_yaml)
    return registry
