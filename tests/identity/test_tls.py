"""`appliance serve --tls`: site CA on first start, TLS 1.3 only, CA download, Secure cookie."""

from __future__ import annotations

import json
import os
import ssl
import stat
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import appliance_cmd, free_port


def _serve_tls(tmp_path: Path) -> tuple[subprocess.Popen[bytes], str, Path]:
    port = free_port()
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    env.update({"APPLIANCE_ENGINE__ENABLED": "false", "APPLIANCE_ADMIN_PASSWORD": "tls-admin-pw-1",
                "APPLIANCE_STARTER_BUNDLE": str(tmp_path / "none")})
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(appliance_cmd("serve", "--tls", "--data-dir", str(data), "--listen",
                                          f"127.0.0.1:{port}"), stdout=log,
                            stderr=subprocess.STDOUT, env=env)
    ca = data / "tls" / "ca.pem"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError((tmp_path / "serve.log").read_text())
        if ca.exists():
            ctx = ssl.create_default_context(cafile=str(ca))
            try:
                with urllib.request.urlopen(f"https://127.0.0.1:{port}/health", context=ctx,
                                            timeout=2):
                    return proc, f"https://127.0.0.1:{port}", data
            except (urllib.error.URLError, ConnectionError):
                pass
        time.sleep(0.2)
    proc.terminate()
    raise AssertionError("TLS server did not come up: " + (tmp_path / "serve.log").read_text())


def test_serve_tls(tmp_path: Path) -> None:
    proc, url, data = _serve_tls(tmp_path)
    try:
        ca_file = data / "tls" / "ca.pem"
        assert stat.S_IMODE((data / "tls" / "ca.key").stat().st_mode) == 0o600
        assert stat.S_IMODE((data / "tls" / "server.key").stat().st_mode) == 0o600
        ctx = ssl.create_default_context(cafile=str(ca_file))
        # the CA certificate is public and identical to the file
        with urllib.request.urlopen(url + "/api/tls/ca.pem", context=ctx) as resp:
            assert resp.read() == ca_file.read_bytes()
        # the name "localhost" is covered too
        with urllib.request.urlopen(url.replace("127.0.0.1", "localhost") + "/health",
                                    context=ctx) as resp:
            assert resp.status == 200
        # an unverified client is refused by the certificate check
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(url + "/health", context=ssl.create_default_context())
        # a client limited to TLS 1.2 cannot connect
        old = ssl.create_default_context(cafile=str(ca_file))
        old.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
            urllib.request.urlopen(url + "/health", context=old)
        # the session cookie is Secure under TLS
        req = urllib.request.Request(url + "/api/auth/login", method="POST",
                                     data=json.dumps({"username": "admin",
                                                      "password": "tls-admin-pw-1"}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, context=ctx) as resp:
            cookies = resp.headers.get_all("Set-Cookie")
        session = next(c for c in cookies if c.startswith("fa_session="))
        assert "Secure" in session and "HttpOnly" in session
    finally:
        proc.terminate()
        proc.wait(30)
    # a second start reuses the CA
    before = (data / "tls" / "ca.pem").read_bytes()
    proc, url, data = _serve_tls(tmp_path)
    proc.terminate()
    proc.wait(30)
    assert (data / "tls" / "ca.pem").read_bytes() == before
