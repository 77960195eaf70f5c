"""Blobs belong to repositories: /v2/<name>/blobs/ serves only what <name>'s manifests name."""

from __future__ import annotations

import json
from contextlib import closing
from pathlib import Path
from typing import Any

from appliance.bundle.manage import backfill_image_blobs, remove_bundle
from appliance.content.store import BlobStore
from appliance.store.state import open_sync
from tests.conftest import AppFactory
from tests.content.conftest import IMAGE


def _doc(srv: Path, name: str, digest: str) -> Any:
    return json.loads((srv / name / "blobs" / "sha256" / digest[7:]).read_bytes())


def _parts(scoped: dict[str, Any], name: str) -> tuple[str, str]:
    """(config, layer) digests of one of the fixture's single-platform images."""
    manifest = _doc(scoped["srv"], name, scoped["digests"][name])
    return manifest["config"]["digest"], manifest["layers"][0]["digest"]


async def _served(client: Any, repo: str, digest: str, query: str = "") -> bool:
    """True when GET and HEAD both serve the blob; False when both answer BLOB_UNKNOWN."""
    get = await client.get(f"/v2/{repo}/blobs/{digest}{query}")
    head = await client.head(f"/v2/{repo}/blobs/{digest}{query}")
    assert get.status == head.status, (repo, digest)
    if get.status == 200:
        assert get.headers["Docker-Content-Digest"] == digest
        assert head.headers["Docker-Content-Digest"] == digest
        assert int(head.headers["Content-Length"]) == len(await get.read())
        return True
    assert get.status == 404, (repo, digest, get.status)
    assert get.headers["Content-Type"] == "application/json"
    assert get.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    body = await get.json()
    assert list(body) == ["errors"] and len(body["errors"]) == 1
    error = body["errors"][0]
    assert set(error) == {"code", "message", "detail"}
    assert error["code"] == "BLOB_UNKNOWN", (repo, digest, error)
    assert error["detail"]["digest"] == digest and digest in error["message"]
    assert await head.read() == b""
    return False


async def test_blob_is_served_only_under_a_repository_that_references_it(
    appliance: AppFactory, scoped_images: dict[str, Any]
) -> None:
    client = await appliance()
    config, layer = _parts(scoped_images, "alpha1")
    _, beta_layer = _parts(scoped_images, "beta")
    for digest in (config, layer):
        assert await _served(client, "site/alpha", digest)
        assert not await _served(client, "site/beta", digest)  # exists, does not reference it
        assert not await _served(client, "site/multi", digest)
    assert await _served(client, "site/beta", beta_layer)
    assert not await _served(client, "site/alpha", beta_layer)
    # the fast path still honours Range
    resp = await client.get(f"/v2/site/alpha/blobs/{layer}", headers={"Range": "bytes=0-9"})
    assert resp.status == 206 and len(await resp.read()) == 10
    # a manifest is served through /manifests/, not as a blob
    assert not await _served(client, "site/alpha", scoped_images["digests"]["alpha1"])
    resp = await client.get(f"/v2/no/such/blobs/{layer}")
    assert resp.status == 404
    assert (await resp.json())["errors"][0]["code"] == "NAME_UNKNOWN"


async def test_index_children_blobs_are_served_under_its_repository(
    appliance: AppFactory, scoped_images: dict[str, Any]
) -> None:
    client = await appliance()
    resp = await client.get("/v2/site/multi/manifests/1")
    assert resp.status == 200
    index = json.loads(await resp.read())
    assert len(index["manifests"]) == 2
    for child in index["manifests"]:
        resp = await client.get(f"/v2/site/multi/manifests/{child['digest']}")
        assert resp.status == 200
        manifest = json.loads(await resp.read())
        for digest in [manifest["config"]["digest"], *(x["digest"] for x in manifest["layers"])]:
            assert await _served(client, "site/multi", digest)
            assert not await _served(client, "site/alpha", digest)


async def test_ns_mirror_requests_are_scoped_too(registry: Any) -> None:
    resp = await registry.get("/v2/library/mirrored/manifests/3?ns=docker.io")
    layer = json.loads(await resp.read())["layers"][0]["digest"]
    assert await _served(registry, "library/mirrored", layer, "?ns=docker.io")
    assert await _served(registry, IMAGE, layer, "?ns=quay.io")  # no prefix: any ns
    resp = await registry.get(f"/v2/library/mirrored/blobs/{layer}?ns=quay.io")
    assert (await resp.json())["errors"][0]["code"] == "NAME_UNKNOWN"


async def test_removed_image_blobs_are_no_longer_served(
    appliance: AppFactory, scoped_images: dict[str, Any]
) -> None:
    client = await appliance()
    _, layer1 = _parts(scoped_images, "alpha1")
    config2, layer2 = _parts(scoped_images, "alpha2")
    for digest in (layer1, config2, layer2):
        assert await _served(client, "site/alpha", digest)
    with closing(open_sync(scoped_images["data"])) as conn:
        remove_bundle(conn, scoped_images["bundles"][2], actor="test")
        assert (
            conn.execute(
                "SELECT count(*) FROM image_blobs WHERE bundle_id=?", (scoped_images["bundles"][2],)
            ).fetchone()[0]
            == 0
        )
    # site/alpha:1 keeps the repository; alpha:2's blobs are still on disk until gc
    assert BlobStore(scoped_images["data"] / "blobs").path(layer2).is_file()
    assert not await _served(client, "site/alpha", layer2)
    assert not await _served(client, "site/alpha", config2)
    assert await _served(client, "site/alpha", layer1)
    with closing(open_sync(scoped_images["data"])) as conn:
        remove_bundle(conn, scoped_images["bundles"][1], actor="test")
        assert conn.execute("SELECT count(*) FROM image_blobs").fetchone()[0] == 0
    resp = await client.get(f"/v2/site/alpha/blobs/{layer1}")
    assert (await resp.json())["errors"][0]["code"] == "NAME_UNKNOWN"


async def test_images_imported_before_image_blobs_are_backfilled_at_start(
    appliance: AppFactory, scoped_images: dict[str, Any]
) -> None:
    query = "SELECT repository, digest, bundle_id FROM image_blobs ORDER BY 1, 2, 3"
    with closing(open_sync(scoped_images["data"])) as conn:
        imported = [tuple(r) for r in conn.execute(query)]
        conn.execute("DELETE FROM image_blobs")  # as a data dir from before the table
    # site/alpha: config + layer of each tag; site/beta: 2; site/multi: 2 children x 2
    assert len(imported) == 10
    client = await appliance()
    _, layer = _parts(scoped_images, "alpha1")
    assert await _served(client, "site/alpha", layer)
    with closing(open_sync(scoped_images["data"])) as conn:
        assert [tuple(r) for r in conn.execute(query)] == imported
        assert backfill_image_blobs(conn, BlobStore(scoped_images["data"] / "blobs")) == 0
