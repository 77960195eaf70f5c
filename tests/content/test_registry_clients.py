"""Real registry clients against the appliance's /v2/: skopeo, and containerd's ctr."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.content.conftest import IMAGE

APT = "apt-get install -y skopeo containerd"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed; install it with `{APT}`")
    return path


async def _run(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{err.decode()}"
    return out.decode()


def _address(registry: Any) -> str:
    return f"127.0.0.1:{registry.server.port}"


async def test_skopeo_inspect_and_copy(registry: Any, image_bundle: dict[str, Any],
                                       tmp_path: Path) -> None:
    skopeo = _tool("skopeo")
    ref = f"docker://{_address(registry)}/{IMAGE}:1.0"
    info = json.loads(await _run(skopeo, "inspect", "--tls-verify=false", ref))
    assert info["Digest"] == image_bundle["digest"]
    assert info["Name"].endswith(IMAGE)
    raw = await _run(skopeo, "inspect", "--raw", "--tls-verify=false", ref)
    stored = (image_bundle["layout"] / "blobs" / "sha256" / image_bundle["digest"][7:])
    assert raw.encode() == stored.read_bytes()
    policy = tmp_path / "policy.json"
    policy.write_text('{"default": [{"type": "insecureAcceptAnything"}]}')
    out = tmp_path / "copied"
    await _run(skopeo, "--policy", str(policy), "copy", "--src-tls-verify=false", ref,
               f"dir:{out}")
    manifest = json.loads((out / "manifest.json").read_text())
    layer = out / manifest["layers"][0]["digest"][7:]
    assert b"hello from the appliance" in layer.read_bytes()
    tags = json.loads(await _run(skopeo, "list-tags", "--tls-verify=false",
                                 f"docker://{_address(registry)}/{IMAGE}"))
    assert tags["Tags"] == ["1.0"]


@contextlib.asynccontextmanager
async def _containerd(root: Path) -> AsyncIterator[str]:
    """A private containerd (own root, state and socket) for one test."""
    containerd = _tool("containerd")
    sock = root / "c.sock"
    config = root / "config.toml"
    config.write_text(f"""
version = 2
root = "{root / 'root'}"
state = "{root / 'state'}"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{sock}"
""")
    log = (root / "containerd.log").open("wb")
    proc = await asyncio.create_subprocess_exec(containerd, "--config", str(config),
                                                stdout=log, stderr=log)
    try:
        for _ in range(100):
            if sock.exists():
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail("containerd did not start:\n" + (root / "containerd.log").read_text())
        yield str(sock)
    finally:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        log.close()


async def test_ctr_pulls_directly_and_as_a_mirror(registry: Any, image_bundle: dict[str, Any],
                                                  tmp_path: Path) -> None:
    ctr = _tool("ctr")
    if os.geteuid() != 0:
        pytest.fail("containerd needs root to run: run the tests as root (as CI does)")
    root = tmp_path  # short enough for a unix socket path
    try:
        async with _containerd(root) as sock:
            base = [ctr, "--address", sock, "--namespace", "test"]
            ref = f"{_address(registry)}/{IMAGE}:1.0"
            await _run(*base, "images", "pull", "--plain-http", ref)
            listed = await _run(*base, "images", "ls", "-q")
            assert ref in listed.split()
            # as a docker.io mirror, configured with the hosts.toml the appliance renders
            resp = await registry.get(
                f"/api/registry/hosts.toml?registry=docker.io&host={_address(registry)}",
                headers={"Authorization": f"Bearer {await _admin_key(registry)}"})
            assert resp.status == 200, await resp.text()
            hosts = root / "certs.d" / "docker.io"
            hosts.mkdir(parents=True)
            (hosts / "hosts.toml").write_text(await resp.text())
            await _run(*base, "images", "pull", "--hosts-dir", str(root / "certs.d"),
                       "docker.io/library/mirrored:3")
            info = await _run(*base, "images", "ls")
            assert "docker.io/library/mirrored:3" in info
            assert image_bundle["digest"] in info
    finally:
        # containerd leaves read-only snapshot trees behind
        shutil.rmtree(root / "root", ignore_errors=True)


async def _admin_key(registry: Any) -> str:
    from appliance.app import SERVICES
    from appliance.gateway import keys as keys_api

    created = await keys_api.create_key(registry.app[SERVICES].store, name="ctr-test",
                                        role="admin")
    return str(created.key)
