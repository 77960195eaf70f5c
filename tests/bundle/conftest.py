"""Bundle test factories: a signing key, a small recipe, bundles built from it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.bundle.create import create_bundle
from appliance.bundle.recipe import load_recipe
from appliance.bundle.signing import sign_manifest, trust_key
from appliance.store.state import open_sync

GGUF = b"GGUF" + bytes(range(256)) * 64


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


def write_recipe(tmp_path: Path, extra: str = "", model: bytes = GGUF) -> Path:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    (src / "tiny.gguf").write_bytes(model)
    (src / "k3s").write_bytes(b"#!/bin/sh\necho k3s\n" * 1000)
    recipe = tmp_path / "r.toml"
    recipe.write_text(f"""
name = "site-starter"
version = "1.0.0"

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
             model: bytes = GGUF) -> Path:
        nonlocal count
        count += 1
        out = tmp_path / "usb" / f"bundle{count}"
        create_bundle(load_recipe(write_recipe(tmp_path, extra, model)), out,
                      sign_key=signing_key if sign else None, part_size=part_size)
        return out
    return make


@pytest.fixture
def data_dir(tmp_path: Path, signing_key: Ed25519PrivateKey) -> Path:
    """A data directory that trusts ``signing_key``."""
    data = tmp_path / "data"
    trust(data, signing_key)
    return data
