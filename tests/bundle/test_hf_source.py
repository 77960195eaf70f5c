"""`hf:` model sources, against a local fake of the Hugging Face Hub (no internet)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from appliance.bundle.create import create_bundle
from appliance.bundle.hf import HFFile, parse_hf, select
from appliance.bundle.importer import import_bundle
from appliance.bundle.recipe import load_recipe, resolve_source
from appliance.kernel.errors import BadRequest
from tests.bundle.conftest import GGUF
from tests.conftest import appliance_cmd, start_app

TINY_GGUF = b"GGUF" + struct.pack("<IQQ", 3, 0, 0)
TOKEN = "hf_test_token"


def _safetensors(tensors: dict[str, list[int]]) -> bytes:
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in tensors.items():
        n = 4
        for d in shape:
            n *= d
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + b"\0" * offset


SAFETENSORS_REPO = {
    "README.md": b"---\nlicense: apache-2.0\n---\n# tiny\n",
    ".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n",
    "assets/banner.png": b"\x89PNG\r\n\x1a\n",
    "onnx/model.onnx": b"not really onnx",
    "model/config.json": json.dumps({"model_type": "bert", "architectures": ["BertModel"],
                                     "hidden_size": 8, "max_position_embeddings": 512}).encode(),
    "model/model.safetensors": _safetensors({"w": [4, 8]}),
    "model/tokenizer.json": json.dumps({"version": "1.0", "model": {
        "type": "WordPiece", "vocab": {"[UNK]": 0, "a": 1}, "unk_token": "[UNK]"}}).encode(),
}


def _git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


class FakeHub:
    """The two Hub routes, LFS files redirected to a "CDN" on another host name."""

    def __init__(self) -> None:
        self.repos: dict[str, dict[str, bytes]] = {
            "acme/tiny-gguf": {"tiny.gguf": TINY_GGUF, "README.md": b"# tiny\n",
                               "big.gguf": GGUF},
            "acme/tiny-st": SAFETENSORS_REPO,
            "acme/gated": {"tiny.gguf": TINY_GGUF},
        }
        self.gated = {"acme/gated"}
        self.port = 0
        self.cut: set[str] = set()  # files whose next CDN answer stops halfway
        self.corrupt: set[str] = set()  # files the CDN serves with one byte flipped
        self.plain_listing = False  # siblings without sizes or hashes (only the headers tell)
        self.ranges: list[str] = []
        self.cdn_auth: list[str] = []

    @staticmethod
    def commit(repo: str) -> str:
        return hashlib.sha1(repo.encode(), usedforsecurity=False).hexdigest()

    @staticmethod
    def is_lfs(name: str) -> bool:
        return name.endswith((".gguf", ".safetensors", ".png", ".onnx"))

    def _denied(self, request: web.Request, repo: str) -> web.Response | None:
        if repo not in self.repos:
            return web.json_response({"error": "Repository not found"}, status=404,
                                     headers={"X-Error-Code": "RepositoryNotFound"})
        if repo in self.gated and request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.json_response(
                {"error": f"Access to model {repo} is restricted."}, status=401,
                headers={"X-Error-Code": "GatedRepo",
                         "X-Error-Message": f"Access to model {repo} is restricted."})
        return None

    async def revision(self, request: web.Request) -> web.Response:
        repo = f"{request.match_info['org']}/{request.match_info['repo']}"
        denied = self._denied(request, repo)
        if denied:
            return denied
        if request.match_info["rev"] not in ("main", self.commit(repo)):
            return web.json_response({"error": "Invalid rev id"}, status=404,
                                     headers={"X-Error-Code": "RevisionNotFound"})
        siblings = []
        for name, data in self.repos[repo].items():
            entry: dict[str, object] = {"rfilename": name}
            if not self.plain_listing:
                entry["size"] = len(data)
                if self.is_lfs(name):
                    entry["blobId"] = "0" * 40  # the pointer's blob, not the content's
                    entry["lfs"] = {"sha256": hashlib.sha256(data).hexdigest(),
                                    "size": len(data), "pointerSize": 134}
                else:
                    entry["blobId"] = _git_sha1(data)
            siblings.append(entry)
        return web.json_response({"id": repo, "sha": self.commit(repo), "siblings": siblings})

    async def resolve(self, request: web.Request) -> web.StreamResponse:
        repo = f"{request.match_info['org']}/{request.match_info['repo']}"
        denied = self._denied(request, repo)
        if denied:
            return denied
        name = request.match_info["path"]
        data = self.repos[repo].get(name)
        if data is None or request.match_info["rev"] != self.commit(repo):
            return web.json_response({"error": "Entry not found"}, status=404,
                                     headers={"X-Error-Code": "EntryNotFound"})
        if not self.is_lfs(name):
            etag = f'"{_git_sha1(data)}"'
            if name in self.corrupt:
                data = data[:-1] + bytes([data[-1] ^ 1])
            return await self._serve(request, name, data, {"ETag": etag})
        sha = hashlib.sha256(data).hexdigest()
        raise web.HTTPFound(f"http://localhost:{self.port}/cdn/{repo}/{name}", headers={
            "X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(len(data)), "ETag": f'"{sha}"',
            "X-Repo-Commit": self.commit(repo)})

    async def cdn(self, request: web.Request) -> web.StreamResponse:
        repo = f"{request.match_info['org']}/{request.match_info['repo']}"
        self.cdn_auth.append(request.headers.get("Authorization", ""))
        name = request.match_info["path"]
        data = self.repos[repo][name]
        if name in self.corrupt:
            data = data[:-1] + bytes([data[-1] ^ 1])
        return await self._serve(request, name, data, {})

    async def _serve(self, request: web.Request, name: str, data: bytes,
                     headers: dict[str, str]) -> web.StreamResponse:
        start, status = 0, 200
        if "Range" in request.headers:
            self.ranges.append(f"{name}:{request.headers['Range']}")
            match = re.fullmatch(r"bytes=(\d+)-", request.headers["Range"])
            assert match
            start = int(match.group(1))
            if start >= len(data):
                return web.Response(status=416,
                                    headers={"Content-Range": f"bytes */{len(data)}"})
            status = 206
            headers = {**headers, "Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}
        body = data[start:]
        if name in self.cut:
            self.cut.discard(name)
            resp = web.StreamResponse(status=status, headers=headers)
            resp.content_length = len(body)
            await resp.prepare(request)
            await resp.write(body[: len(body) // 2])
            assert request.transport is not None
            request.transport.close()
            return resp
        return web.Response(status=status, body=body, headers=headers)


@pytest.fixture
async def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeHub]:
    fake = FakeHub()
    app = web.Application()
    app.router.add_get("/api/models/{org}/{repo}/revision/{rev}", fake.revision)
    app.router.add_get("/cdn/{org}/{repo}/{path:.*}", fake.cdn)
    app.router.add_get("/{org}/{repo}/resolve/{rev}/{path:.*}", fake.resolve)
    server = await start_app(app)
    fake.port = server.port
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.port}")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    yield fake
    await server.close()


def _cached(tmp_path: Path, repo: str) -> Path:
    return tmp_path / "cache" / "foundry-appliance" / "sources" / "hf" / \
        repo.replace("/", "--") / FakeHub.commit(repo)


def test_parse_and_select() -> None:
    assert parse_hf("acme/m") == ("acme/m", "main", "")
    assert parse_hf("acme/m@v1.0#sub/") == ("acme/m", "v1.0", "sub/")
    assert parse_hf("gpt2#*.gguf") == ("gpt2", "main", "*.gguf")
    for bad in ("", "a/b/c", "acme/m@", "acme/m#../x", "acme/m#/etc/passwd", "../x"):
        with pytest.raises(BadRequest):
            parse_hf(bad)
    files = [HFFile(n, None, "", "") for n in SAFETENSORS_REPO]
    assert sorted(select(files, "")) == ["README.md", "model/config.json",
                                         "model/model.safetensors", "model/tokenizer.json",
                                         "onnx/model.onnx"]
    assert sorted(select(files, "model/")) == ["config.json", "model.safetensors",
                                               "tokenizer.json"]
    assert sorted(select(files, "*.json")) == ["model/config.json", "model/tokenizer.json"]
    assert list(select(files, "onnx/model.onnx")) == ["model.onnx"]


async def test_gguf_file_through_cli_create_and_import(hub: FakeHub, tmp_path: Path) -> None:
    recipe = tmp_path / "r.toml"
    recipe.write_text('name = "from-hf"\nversion = "1.0.0"\n\n[[models]]\nname = "tiny-hf"\n'
                      'source = "hf:acme/tiny-gguf#tiny.gguf"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}

    async def cli(*args: str) -> tuple[str, str]:
        proc = await asyncio.create_subprocess_exec(
            *appliance_cmd("bundle", *args), env=env, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode == 0, err.decode()
        return out.decode(), err.decode()

    _, err = await cli("create", str(recipe), "--out", str(tmp_path / "usb" / "b"))
    assert "connected side: downloading acme/tiny-gguf@" in err
    assert "tiny.gguf (24 bytes) from Hugging Face" in err
    assert hub.cdn_auth == [""]
    assert (_cached(tmp_path, "acme/tiny-gguf") / "tiny.gguf").read_bytes() == TINY_GGUF
    out, _ = await cli("import", str(tmp_path / "usb" / "b"), "--allow-unsigned",
                       "--data-dir", str(tmp_path / "data"))
    assert "1 model(s) (tiny-hf)" in out
    # a second build reuses the cache: nothing is downloaded again
    _, err = await cli("create", str(recipe), "--out", str(tmp_path / "usb" / "b2"))
    assert "downloading" not in err and hub.cdn_auth == [""]


async def test_safetensors_directory(hub: FakeHub, tmp_path: Path,
                                     capfd: pytest.CaptureFixture[str]) -> None:
    files = await asyncio.to_thread(resolve_source, "hf:acme/tiny-st@main#model/")
    assert {k: v.read_bytes() for k, v in files.items()} == {
        k[len("model/"):]: v for k, v in SAFETENSORS_REPO.items() if k.startswith("model/")}
    assert "from Hugging Face" in capfd.readouterr().err
    # the whole repository: dotfiles and images left out
    whole = await asyncio.to_thread(resolve_source, "hf:acme/tiny-st")
    assert sorted(whole) == ["README.md", "model/config.json", "model/model.safetensors",
                             "model/tokenizer.json", "onnx/model.onnx"]
    recipe = tmp_path / "r.toml"
    recipe.write_text('name = "st"\nversion = "1.0.0"\n\n[[models]]\nname = "tiny-st"\n'
                      f'source = "hf:acme/tiny-st@{FakeHub.commit("acme/tiny-st")}#model/"\n')
    bundle = tmp_path / "usb" / "st"
    await asyncio.to_thread(create_bundle, load_recipe(recipe), bundle)
    result = await asyncio.to_thread(import_bundle, tmp_path / "data", bundle,
                                     allow_unsigned=True)
    assert result.models == ["tiny-st"]


async def test_resume_after_cut_off(hub: FakeHub, tmp_path: Path,
                                    capfd: pytest.CaptureFixture[str]) -> None:
    # cut off mid-stream: the same run resumes with a Range request
    hub.cut.add("big.gguf")
    files = await asyncio.to_thread(resolve_source, "hf:acme/tiny-gguf#big.gguf")
    assert files["big.gguf"].read_bytes() == GGUF
    assert hub.ranges == [f"big.gguf:bytes={len(GGUF) // 2}-"]
    assert "resuming at byte" in capfd.readouterr().err
    # a partial file left by an earlier run (kill -9) is resumed too
    cached = files["big.gguf"]
    cached.unlink()
    partial = cached.with_name("big.gguf.partial")
    partial.write_bytes(GGUF[:1000])
    hub.ranges.clear()
    files = await asyncio.to_thread(resolve_source, "hf:acme/tiny-gguf#big.gguf")
    assert files["big.gguf"].read_bytes() == GGUF and not partial.exists()
    assert hub.ranges == ["big.gguf:bytes=1000-"]


@pytest.mark.parametrize("plain", [False, True], ids=["listing", "x-linked-etag"])
async def test_wrong_sha_is_refused(hub: FakeHub, tmp_path: Path, plain: bool) -> None:
    hub.plain_listing = plain
    hub.corrupt.add("big.gguf")
    with pytest.raises(BadRequest, match=r"does not match \(sha256 .* expected "
                                         + hashlib.sha256(GGUF).hexdigest()):
        await asyncio.to_thread(resolve_source, "hf:acme/tiny-gguf#big.gguf")
    root = _cached(tmp_path, "acme/tiny-gguf")
    assert not (root / "big.gguf").exists() and not (root / "big.gguf.partial").exists()
    hub.corrupt.clear()
    files = await asyncio.to_thread(resolve_source, "hf:acme/tiny-gguf#big.gguf")
    assert files["big.gguf"].read_bytes() == GGUF


async def test_git_blob_checked_for_small_files(hub: FakeHub, tmp_path: Path) -> None:
    hub.corrupt.add("README.md")  # served straight from the Hub (not LFS): its git blob id
    with pytest.raises(BadRequest, match=r"README\.md does not match \(git blob"):
        await asyncio.to_thread(resolve_source, "hf:acme/tiny-gguf#README.md")
    assert not (_cached(tmp_path, "acme/tiny-gguf") / "README.md.partial").exists()


async def test_gated_unknown_and_missing(hub: FakeHub, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(BadRequest, match=r"HTTP 401 \(Access to model acme/gated is "
                                         r"restricted\.\).*gated or private.*set HF_TOKEN"):
        await asyncio.to_thread(resolve_source, "hf:acme/gated#tiny.gguf")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    files = await asyncio.to_thread(resolve_source, "hf:acme/gated#tiny.gguf")
    assert files["tiny.gguf"].read_bytes() == TINY_GGUF
    assert hub.cdn_auth == [""]  # the token stays on the Hub's host, never sent to the CDN
    with pytest.raises(BadRequest, match=r"Hugging Face has no .* acme/nope .*unknown"):
        await asyncio.to_thread(resolve_source, "hf:acme/nope")
    with pytest.raises(BadRequest, match=r"revision 'v9'.*unknown repository, revision"):
        await asyncio.to_thread(resolve_source, "hf:acme/tiny-gguf@v9")
    with pytest.raises(BadRequest, match=r"no file matching 'absent\.gguf'.*tiny\.gguf"):
        await asyncio.to_thread(resolve_source, "hf:acme/tiny-gguf#absent.gguf")
    with pytest.raises(BadRequest, match="no file matching"):
        await asyncio.to_thread(resolve_source, "hf:acme/tiny-gguf#*.bin")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:1")
    with pytest.raises(BadRequest, match="cannot reach Hugging Face"):
        await asyncio.to_thread(resolve_source, "hf:acme/tiny-gguf")

