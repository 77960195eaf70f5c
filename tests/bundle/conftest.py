"""Bundle test factories: a signing key, a small recipe, bundles built from it."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.bundle.create import create_bundle
from appliance.bundle.recipe import load_recipe
from appliance.bundle.signing import sign_manifest, trust_key
from appliance.store.state import open_sync


def gguf(total: int, *, fill: bytes = bytes(range(256)), license: str = "apache-2.0",
         template: str = "{{ messages }}") -> bytes:
    """A valid GGUF v3 file of exactly ``total`` bytes: a small header, then tensor data."""
    import struct

    def string(text: str) -> bytes:
        raw = text.encode()
        return struct.pack("<Q", len(raw)) + raw

    kv = [("general.architecture", 8, string("llama")),
          ("llama.context_length", 4, struct.pack("<I", 2048)),
          ("general.file_type", 4, struct.pack("<I", 3)),
          ("general.license", 8, string(license)),
          ("tokenizer.chat_template", 8, string(template)),
          ("tokenizer.ggml.tokens", 9, struct.pack("<IQ", 8, 2) + string("a") + string("b"))]
    head = b"GGUF" + struct.pack("<IQQ", 3, 1, len(kv))
    for key, kind, value in kv:
        head += string(key) + struct.pack("<I", kind) + value
    head += string("w") + struct.pack("<I", 2) + struct.pack("<QQ", 8, 16)
    head += struct.pack("<IQ", 0, 0)
    head += b"\0" * (-len(head) % 32)
    assert total >= len(head)
    body = (fill * (total // len(fill) + 1))[: total - len(head)]
    return head + body


GGUF = gguf(16388)


@pytest.fixture
def signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def trust(data_dir: Path, key: Ed25519PrivateKey) -> None:
    conn = open_sync(data_dir)
    try:
        trust_key(conn, key.public_key(), name="test", actor="test")
    finally:
        conn.close()


def resign(bundle: Path, key: Ed25519PrivateKey, manifest: dict[str, Any] | None = None) -> None:
    """Rewrite bundle.json (optionally changed) and sign it again with ``key``."""
    if manifest is not None:
        (bundle / "bundle.json").write_text(json.dumps(manifest))
    raw = (bundle / "bundle.json").read_bytes()
    (bundle / "bundle.json.sig").write_bytes(sign_manifest(key, raw))


def write_recipe(tmp_path: Path, extra: str = "", model: bytes = GGUF,
                 version: str = "1.0.0") -> Path:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    (src / "tiny.gguf").write_bytes(model)
    (src / "k3s").write_bytes(b"#!/bin/sh\necho k3s\n" * 1000)
    recipe = tmp_path / "r.toml"
    recipe.write_text(f"""
name = "site-starter"
version = "{version}"

[[models]]
name = "my-local-model"
source = "file:{src / 'tiny.gguf'}"

[[files]]
name = "k3s"
source = "file:{src / 'k3s'}"
{extra}
""")
    return recipe


MakeBundle = Callable[..., Path]


@pytest.fixture
def make_bundle(tmp_path: Path, signing_key: Ed25519PrivateKey) -> MakeBundle:
    """Build a bundle from the small recipe: signed by ``signing_key`` unless told otherwise."""
    count = 0

    def make(*, sign: bool = True, part_size: int = 0, extra: str = "",
             model: bytes = GGUF, version: str = "1.0.0") -> Path:
        nonlocal count
        count += 1
        out = tmp_path / "usb" / f"bundle{count}"
        create_bundle(load_recipe(write_recipe(tmp_path, extra, model, version)), out,
                      sign_key=signing_key if sign else None, part_size=part_size)
        return out
    return make


@pytest.fixture
def data_dir(tmp_path: Path, signing_key: Ed25519PrivateKey) -> Path:
    """A data directory that trusts ``signing_key``."""
    data = tmp_path / "data"
    trust(data, signing_key)
    return data


# --- a source registry for `registry:` recipe sources: Debian's docker-registry -------------

SOURCE_REGISTRY_APT = "apt-get install -y docker-registry skopeo"


@pytest.fixture
def source_registry(tmp_path: Path) -> Iterator[str]:
    """Debian's ``docker-registry`` (distribution 2.x) on loopback; yields ``127.0.0.1:PORT``."""
    import shutil
    import subprocess
    import time
    import urllib.request

    from tests.conftest import free_port

    binary = shutil.which("docker-registry")
    if binary is None:
        pytest.fail(f"docker-registry is not installed; install it with `{SOURCE_REGISTRY_APT}`")
    port = free_port()
    config = tmp_path / "registry.yml"
    config.write_text(f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n"
                      f"    rootdirectory: {tmp_path / 'registry'}\n"
                      f"http:\n  addr: 127.0.0.1:{port}\n")
    log = (tmp_path / "registry.log").open("wb")
    proc = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=log)
    try:
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None:
                    break
                time.sleep(0.1)
        else:
            pytest.fail("docker-registry did not start")
        if proc.poll() is not None:
            pytest.fail("docker-registry exited:\n" + (tmp_path / "registry.log").read_text())
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def skopeo_push(layout: Path, tag: str, dest: str, *, all_platforms: bool = False) -> None:
    """``skopeo copy oci:LAYOUT:TAG docker://DEST`` into a plain-HTTP registry."""
    import shutil
    import subprocess

    skopeo = shutil.which("skopeo")
    if skopeo is None:
        pytest.fail(f"skopeo is not installed; install it with `{SOURCE_REGISTRY_APT}`")
    policy = layout.parent / "policy.json"
    policy.write_text('{"default": [{"type": "insecureAcceptAnything"}]}')
    args = [skopeo, "--policy", str(policy), "copy", "--dest-tls-verify=false"]
    if all_platforms:
        args.append("--all")
    result = subprocess.run([*args, f"oci:{layout}:{tag}", f"docker://{dest}"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
