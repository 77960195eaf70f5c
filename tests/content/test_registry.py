"""The read-only OCI registry at /v2/: protocol details, errors, node configuration."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from tests.content.conftest import IMAGE

MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def _blob(layout: Path, digest: str) -> bytes:
    return (layout / "blobs" / "sha256" / digest[7:]).read_bytes()


async def test_base_and_catalog(registry: Any) -> None:
    resp = await registry.get("/v2/")
    assert resp.status == 200
    assert resp.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    resp = await registry.get("/v2/_catalog")
    repos = (await resp.json())["repositories"]
    assert IMAGE in repos and "docker.io/library/mirrored" in repos
    resp = await registry.get("/v2/_catalog?n=1")
    assert len((await resp.json())["repositories"]) == 1 and "rel=\"next\"" in resp.headers["Link"]


async def test_manifest_by_tag_and_digest_is_verbatim(registry: Any,
                                                      image_bundle: dict[str, Any]) -> None:
    digest, layout = image_bundle["digest"], image_bundle["layout"]
    stored = _blob(layout, digest)
    for ref in ("1.0", digest):
        resp = await registry.get(f"/v2/{IMAGE}/manifests/{ref}")
        assert resp.status == 200
        body = await resp.read()
        assert body == stored and "sha256:" + hashlib.sha256(body).hexdigest() == digest
        assert resp.headers["Docker-Content-Digest"] == digest
        assert resp.headers["Content-Type"] == MANIFEST
        assert int(resp.headers["Content-Length"]) == len(stored)
    resp = await registry.head(f"/v2/{IMAGE}/manifests/1.0")
    assert resp.status == 200 and await resp.read() == b""
    assert int(resp.headers["Content-Length"]) == len(stored)
    assert resp.headers["Docker-Content-Digest"] == digest
    assert resp.headers["Content-Type"] == MANIFEST


async def test_blob_with_range(registry: Any, image_bundle: dict[str, Any]) -> None:
    layout = image_bundle["layout"]
    manifest = json.loads(_blob(layout, image_bundle["digest"]))
    layer = manifest["layers"][0]["digest"]
    data = _blob(layout, layer)
    resp = await registry.get(f"/v2/{IMAGE}/blobs/{layer}")
    assert resp.status == 200 and await resp.read() == data
    assert resp.headers["Docker-Content-Digest"] == layer
    resp = await registry.get(f"/v2/{IMAGE}/blobs/{layer}", headers={"Range": "bytes=10-19"})
    assert resp.status == 206 and await resp.read() == data[10:20]
    assert resp.headers["Content-Range"] == f"bytes 10-19/{len(data)}"
    resp = await registry.head(f"/v2/{IMAGE}/blobs/{layer}")
    assert resp.status == 200 and int(resp.headers["Content-Length"]) == len(data)


async def test_errors_use_the_oci_shape(registry: Any) -> None:
    cases = [
        (f"/v2/{IMAGE}/manifests/9.9", 404, "MANIFEST_UNKNOWN"),
        ("/v2/no/such/manifests/1", 404, "NAME_UNKNOWN"),
        (f"/v2/{IMAGE}/manifests/sha256:{'0' * 64}", 404, "MANIFEST_UNKNOWN"),
        (f"/v2/{IMAGE}/blobs/sha256:{'0' * 64}", 404, "BLOB_UNKNOWN"),
        (f"/v2/{IMAGE}/blobs/md5:abc", 400, "DIGEST_INVALID"),
        ("/v2/no/such/tags/list", 404, "NAME_UNKNOWN"),
        ("/v2/whatever", 404, "NAME_UNKNOWN"),
    ]
    for path, status, code in cases:
        resp = await registry.get(path)
        assert resp.status == status, path
        assert (await resp.json())["errors"][0]["code"] == code, path


async def test_writes_are_refused(registry: Any) -> None:
    for method, path in [("PUT", f"/v2/{IMAGE}/manifests/2.0"),
                         ("DELETE", f"/v2/{IMAGE}/manifests/1.0"),
                         ("POST", f"/v2/{IMAGE}/blobs/uploads/"),
                         ("PATCH", f"/v2/{IMAGE}/blobs/uploads/x"),
                         ("DELETE", f"/v2/{IMAGE}/blobs/sha256:{'0' * 64}")]:
        resp = await registry.request(method, path, data=b"x")
        assert resp.status == 405, (method, path)
        assert (await resp.json())["errors"][0]["code"] == "UNSUPPORTED"


async def test_tags_list_and_ns_parameter(registry: Any, image_bundle: dict[str, Any]) -> None:
    resp = await registry.get(f"/v2/{IMAGE}/tags/list")
    assert await resp.json() == {"name": IMAGE, "tags": ["1.0"]}
    # containerd mirror requests: ?ns= names the upstream registry
    resp = await registry.get("/v2/library/mirrored/manifests/3?ns=docker.io")
    assert resp.status == 200
    assert resp.headers["Docker-Content-Digest"] == image_bundle["digest"]
    resp = await registry.get("/v2/library/mirrored/manifests/3?ns=quay.io")
    assert resp.status == 404
    resp = await registry.get(f"/v2/{IMAGE}/manifests/1.0?ns=quay.io")
    assert resp.status == 200  # imported without a registry prefix: any ns


async def test_node_configuration_downloads(appliance: Any, image_bundle: dict[str, Any]
                                            ) -> None:
    client = await appliance({"auth": {"required": False}})
    resp = await client.get("/api/registry/hosts.toml?host=10.0.0.5:8080&registry=docker.io")
    text = await resp.text()
    assert resp.status == 200
    assert 'server = "https://registry-1.docker.io"' in text
    assert '[host."http://10.0.0.5:8080"]' in text and '"pull", "resolve"' in text
    resp = await client.get("/api/registry/registries.yaml?host=10.0.0.5:8080")
    text = await resp.text()
    assert '"docker.io":' in text and 'endpoint:\n      - "http://10.0.0.5:8080"' in text


async def test_v2_needs_no_key_but_api_does(registry: Any) -> None:
    assert (await registry.get(f"/v2/{IMAGE}/tags/list")).status == 200
    assert (await registry.get("/api/registry/registries.yaml")).status == 401
