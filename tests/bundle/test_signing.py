"""Signatures: unsigned, untrusted, swapped and altered bundles are refused; trust is audited."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.bundle.importer import import_bundle, verify_bundle
from appliance.bundle.signing import SignatureError, key_id
from appliance.content.store import DigestMismatch
from appliance.store.state import open_sync
from tests.bundle.conftest import MakeBundle, gguf, trust
from tests.conftest import AppFactory, appliance_cmd


def _visible(data: Path) -> tuple[int, int]:
    conn = open_sync(data)
    try:
        return (conn.execute("SELECT count(*) FROM models").fetchone()[0],
                conn.execute("SELECT count(*) FROM bundles").fetchone()[0])
    finally:
        conn.close()


def test_signed_bundle_imports_and_records_signer(make_bundle: MakeBundle, data_dir: Path,
                                                  signing_key: Ed25519PrivateKey) -> None:
    bundle = make_bundle()
    assert (bundle / "bundle.json.sig").is_file()
    result = import_bundle(data_dir, bundle)
    assert result.signed_by == key_id(signing_key.public_key())
    conn = open_sync(data_dir)
    assert conn.execute("SELECT signed_by FROM bundles").fetchone()[0] == result.signed_by
    conn.close()


def test_unsigned_is_refused_unless_allowed(make_bundle: MakeBundle, data_dir: Path) -> None:
    bundle = make_bundle(sign=False)
    with pytest.raises(SignatureError, match="not signed"):
        import_bundle(data_dir, bundle)
    assert _visible(data_dir) == (0, 0)
    result = import_bundle(data_dir, bundle, allow_unsigned=True)
    assert result.signed_by is None and result.models == ["my-local-model"]


def test_untrusted_key_is_refused(make_bundle: MakeBundle, tmp_path: Path) -> None:
    bundle = make_bundle()
    other = tmp_path / "other-site"
    trust(other, Ed25519PrivateKey.generate())
    with pytest.raises(SignatureError, match="not trusted"):
        import_bundle(other, bundle)
    assert _visible(other) == (0, 0)


def test_swapped_signature_is_refused_even_when_unsigned_allowed(
        make_bundle: MakeBundle, data_dir: Path) -> None:
    first = make_bundle()
    second = make_bundle(model=gguf(3000, fill=b"another model"))
    (first / "bundle.json.sig").write_bytes((second / "bundle.json.sig").read_bytes())
    for allow in (False, True):
        with pytest.raises(SignatureError, match="does not match"):
            import_bundle(data_dir, first, allow_unsigned=allow)
    assert _visible(data_dir) == (0, 0)


def test_altered_manifest_is_refused(make_bundle: MakeBundle, data_dir: Path) -> None:
    bundle = make_bundle()
    manifest = json.loads((bundle / "bundle.json").read_text())
    manifest["version"] = "6.6.6"
    (bundle / "bundle.json").write_text(json.dumps(manifest, indent=2))
    with pytest.raises(SignatureError, match="altered"):
        import_bundle(data_dir, bundle)


def test_malformed_signature_file(make_bundle: MakeBundle, data_dir: Path) -> None:
    bundle = make_bundle()
    (bundle / "bundle.json.sig").write_text("not json")
    with pytest.raises(SignatureError, match="malformed"):
        import_bundle(data_dir, bundle)


def test_verify_checks_signature_and_every_file(make_bundle: MakeBundle,
                                                signing_key: Ed25519PrivateKey) -> None:
    bundle = make_bundle()
    trusted = {key_id(signing_key.public_key()): signing_key.public_key()}
    manifest, signer = verify_bundle(bundle, trusted=trusted)
    assert signer == key_id(signing_key.public_key()) and manifest.name == "site-starter"
    with pytest.raises(SignatureError, match="not trusted"):
        verify_bundle(bundle, trusted={})
    blob = max((bundle / "blobs" / "sha256").iterdir(), key=lambda p: p.stat().st_size)
    data = bytearray(blob.read_bytes())
    data[7] ^= 1
    blob.write_bytes(bytes(data))
    with pytest.raises(Exception, match="does not match its sha256"):
        verify_bundle(bundle, trusted=trusted)
    with pytest.raises(DigestMismatch):
        import_bundle(Path(str(bundle) + "-data"), bundle, allow_unsigned=True)


def _cli(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    proc = subprocess.run(appliance_cmd(*args), capture_output=True, text=True, env=env,
                          timeout=120)
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_cli_keygen_sign_verify_trust_import(tmp_path: Path) -> None:
    from tests.bundle.conftest import write_recipe

    recipe = write_recipe(tmp_path)
    prefix = tmp_path / "keys" / "site"
    out = json.loads(_cli("bundle", "keygen", "--out", str(prefix), "--json").stdout)
    assert (Path(out["private_key"]).stat().st_mode & 0o777) == 0o600
    assert "exists" in _cli("bundle", "keygen", "--out", str(prefix), ok=False).stderr
    bundle = tmp_path / "usb" / "b"
    _cli("bundle", "create", str(recipe), "--out", str(bundle), "--sign-key", f"{prefix}.key")
    verified = _cli("bundle", "verify", str(bundle), "--trust", f"{prefix}.pub")
    assert f"signed by trusted key {out['key_id']}" in verified.stdout
    data = tmp_path / "data"
    refused = _cli("bundle", "import", str(bundle), "--data-dir", str(data), ok=False)
    assert refused.returncode == 1 and "not trusted" in refused.stderr
    assert "now trusted" in _cli("bundle", "trust", f"{prefix}.pub", "--data-dir",
                                 str(data)).stdout
    imported = json.loads(_cli("bundle", "import", str(bundle), "--data-dir", str(data),
                               "--json").stdout)
    assert imported["signed_by"] == out["key_id"]
    conn = open_sync(data)
    row = conn.execute("SELECT actor, action, target FROM audit_log").fetchone()
    conn.close()
    assert row["action"] == "bundle.trust_key" and row["target"] == out["key_id"]
    assert row["actor"].startswith("cli:")


async def test_api_import_refuses_unsigned(appliance: AppFactory, make_bundle: MakeBundle
                                           ) -> None:
    client: Any = await appliance({"auth": {"required": False}})
    bundle = make_bundle(sign=False)
    resp = await client.post("/api/bundles/import", json={"path": str(bundle)})
    assert resp.status == 403
    assert "not signed" in (await resp.json())["error"]["message"]
    resp = await client.post("/api/bundles/import",
                             json={"path": str(bundle), "allow_unsigned": True})
    assert resp.status == 201, await resp.text()
