"""`registry:` image sources: pulled from Debian's docker-registry through the distribution API."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.bundle.create import create_bundle
from appliance.bundle.importer import import_bundle
from appliance.bundle.pull import parse_reference
from appliance.bundle.recipe import load_recipe
from appliance.kernel.errors import BadRequest
from tests.bundle.conftest import skopeo_push
from tests.conftest import AppFactory, start_app
from tests.oci import make_index_layout, make_oci_layout, sha256_digest


def _skopeo(*args: str) -> str:
    skopeo = shutil.which("skopeo")
    assert skopeo, "skopeo is not installed"
    result = subprocess.run([skopeo, *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _raw(registry: str, ref: str) -> bytes:
    return _skopeo("inspect", "--raw", "--tls-verify=false",
                   f"docker://{registry}/{ref}").encode()


class Proxy:
    """A registry front in front of docker-registry: anonymous bearer tokens, optional damage."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.corrupt = ""  # "blob" or "manifest"
        self.tokens = 0
        self.address = ""

    async def token(self, request: web.Request) -> web.Response:
        assert request.query["service"] == "test-registry"
        assert request.query["scope"].startswith("repository:")
        self.tokens += 1
        return web.json_response({"token": "t0ken", "expires_in": 300})

    async def v2(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != "Bearer t0ken":
            repo = request.match_info["path"].rsplit("/", 2)[0]
            return web.json_response(
                {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]},
                status=401, headers={"WWW-Authenticate": (
                    f'Bearer realm="http://{self.address}/token",service="test-registry",'
                    f'scope="repository:{repo}:pull"')})
        headers = {"Accept": request.headers.get("Accept", "*/*")}
        async with aiohttp.ClientSession() as session, session.get(
                f"http://{self.upstream}/v2/{request.match_info['path']}",
                headers=headers) as resp:
            body = await resp.read()
            out = {k: v for k, v in resp.headers.items()
                   if k in ("Content-Type", "Docker-Content-Digest")}
        kind = "blob" if "/blobs/" in request.path else "manifest"
        if resp.status == 200 and self.corrupt == kind and len(body) > 100:
            body = body[:-2] + bytes([body[-2] ^ 1]) + body[-1:]
        return web.Response(status=resp.status, body=body, headers=out)


@pytest.fixture
async def proxy(source_registry: str) -> Any:
    front = Proxy(source_registry)
    app = web.Application()
    app.router.add_get("/token", front.token)
    app.router.add_get("/v2/{path:.*}", front.v2)
    server = await start_app(app)
    front.address = f"127.0.0.1:{server.port}"
    yield front
    await server.close()


def _recipe(tmp_path: Path, *images: tuple[str, str]) -> Path:
    recipe = tmp_path / "r.toml"
    body = 'name = "pulled"\nversion = "1.0.0"\n'
    for source, name in images:
        body += f'\n[[images]]\nsource = "{source}"\nname = "{name}"\ninsecure = true\n'
    recipe.write_text(body)
    return recipe


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Downloaded layers go to this test's own cache, not the user's."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def test_parse_reference() -> None:
    ref = parse_reference("127.0.0.1:5000/test/multi:1")
    assert (ref.host, ref.repository, ref.reference) == ("127.0.0.1:5000", "test/multi", "1")
    assert parse_reference("docker.io/busybox").repository == "library/busybox"
    assert parse_reference("ghcr.io/a/b").reference == "latest"
    digest = "sha256:" + "a" * 64
    assert parse_reference(f"quay.io/a/b@{digest}").reference == digest
    for bad in ("busybox", "host/Upper:1", "host/a@sha256:12", "http://host/a:1", "host/a:b c"):
        with pytest.raises(BadRequest):
            parse_reference(bad)


def test_insecure_is_for_registry_sources_only(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, ("oci-layout:/x:y", "a/b:1"))
    with pytest.raises(BadRequest, match="registry: sources only"):
        load_recipe(recipe)


async def test_registry_source_to_appliance(source_registry: str, proxy: Proxy,
                                            appliance: AppFactory, tmp_path: Path,
                                            signing_key: Ed25519PrivateKey, data_dir: Path,
                                            capfd: pytest.CaptureFixture[str]) -> None:
    make_index_layout(tmp_path / "srv" / "multi")
    make_oci_layout(tmp_path / "srv" / "single", text=b"single image\n")
    await asyncio.to_thread(skopeo_push, tmp_path / "srv" / "multi", "multi",
                            f"{source_registry}/test/multi:1", all_platforms=True)
    await asyncio.to_thread(skopeo_push, tmp_path / "srv" / "single", "busybox-test",
                            f"{source_registry}/test/single:2")
    index_raw = await asyncio.to_thread(_raw, source_registry, "test/multi:1")
    single_raw = await asyncio.to_thread(_raw, source_registry, "test/single:2")
    index = json.loads(index_raw)
    amd64 = next(m for m in index["manifests"] if m["platform"]["architecture"] == "amd64")
    arm64 = next(m for m in index["manifests"] if m["platform"]["architecture"] == "arm64")
    recipe = _recipe(
        tmp_path,
        # through the token-auth front; the index keeps its digest, only amd64 is carried
        (f"registry:{proxy.address}/test/multi:1", "site/multi:1"),
        # straight from docker-registry, by digest
        (f"registry:{source_registry}/test/single@{sha256_digest(single_raw)}", "site/single:2"))
    bundle = tmp_path / "usb" / "bundle"
    manifest = await asyncio.to_thread(create_bundle, load_recipe(recipe), bundle,
                                       sign_key=signing_key)
    assert "downloading image" in capfd.readouterr().err
    assert proxy.tokens >= 1
    images = {c.name: c.manifest for c in manifest.contents}
    assert images == {"site/multi": sha256_digest(index_raw),
                      "site/single": sha256_digest(single_raw)}
    blobs = bundle / "blobs" / "sha256"
    assert (blobs / amd64["digest"][7:]).is_file()
    assert not (blobs / arm64["digest"][7:]).exists()
    entries = json.loads((bundle / "index.json").read_text())["manifests"]
    multi = next(e for e in entries if e["annotations"]["dev.foundry.kind"] == "image"
                 and e["digest"] == sha256_digest(index_raw))
    assert multi["annotations"]["dev.foundry.platform"] == "linux/amd64"
    result = await asyncio.to_thread(import_bundle, data_dir, bundle)
    assert sorted(result.images) == ["site/multi:1", "site/single:2"]

    registry = await appliance()
    ours = f"127.0.0.1:{registry.server.port}"
    for ref, raw in (("site/multi:1", index_raw), ("site/single:2", single_raw)):
        info = json.loads(await asyncio.to_thread(
            _skopeo, "inspect", "--tls-verify=false", f"docker://{ours}/{ref}"))
        assert info["Digest"] == sha256_digest(raw)
        assert await asyncio.to_thread(_raw, ours, ref) == raw  # served verbatim
    info = json.loads(await asyncio.to_thread(
        _skopeo, "inspect", "--tls-verify=false", f"docker://{ours}/site/multi:1"))
    assert info["Architecture"] == "amd64"
    resp = await registry.get(f"/v2/site/multi/manifests/{arm64['digest']}")
    assert resp.status == 404


def test_unknown_tag_is_a_clear_error(source_registry: str, tmp_path: Path) -> None:
    make_oci_layout(tmp_path / "srv" / "single")
    skopeo_push(tmp_path / "srv" / "single", "busybox-test", f"{source_registry}/test/single:2")
    recipe = _recipe(tmp_path, (f"registry:{source_registry}/test/single:nope", "a/b:1"))
    with pytest.raises(BadRequest, match=r"has no image .*test/single:nope.*MANIFEST_UNKNOWN"):
        create_bundle(load_recipe(recipe), tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("damage", ["blob", "manifest"])
async def test_digest_mismatch_from_the_registry_is_refused(proxy: Proxy, source_registry: str,
                                                            tmp_path: Path, damage: str) -> None:
    make_oci_layout(tmp_path / "srv" / "single")
    await asyncio.to_thread(skopeo_push, tmp_path / "srv" / "single", "busybox-test",
                            f"{source_registry}/test/single:2")
    proxy.corrupt = damage
    recipe = _recipe(tmp_path, (f"registry:{proxy.address}/test/single:2", "a/b:1"))
    with pytest.raises(BadRequest, match=r"does not match its digest.*refused"):
        await asyncio.to_thread(create_bundle, load_recipe(recipe), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    cached = tmp_path / "cache" / "foundry-appliance" / "sources" / "blobs" / "sha256"
    assert not any(cached.iterdir()) if cached.exists() else True  # nothing damaged is kept
