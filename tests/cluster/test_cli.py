"""The CLI forms of the issue, as written: hosts add|list|remove|check, install."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.cluster.test_hosts import h100_host
from tests.cluster.testhosts import HostFarm
from tests.conftest import appliance_cmd


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(appliance_cmd(*args), capture_output=True, text=True, timeout=180)


def test_hosts_and_install_commands(farm: HostFarm, tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    gpu = farm.create("gpu1")
    h100_host(gpu)
    gpu.start()
    (plain,) = farm.start("cpu1")
    key = str(farm.client_key)

    # first contact: the key is shown, not trusted
    out = cli("hosts", "add", "--data-dir", data, "--name", "gpu1", "--address", gpu.address,
              "--user", "root", "--key-file", key)
    assert out.returncode == 0, out.stderr
    expected_fp = subprocess.run(["ssh-keygen", "-lf", str(gpu.dir / "ssh_host_ed25519_key.pub")],
                                 capture_output=True, text=True).stdout.split()[1]
    assert expected_fp in out.stdout and "accept-key gpu1" in out.stdout
    out = cli("install", "preflight", "--hosts", "gpu1", "--data-dir", data)
    assert out.returncode == 1 and "not accepted yet" in out.stdout
    out = cli("hosts", "accept-key", "gpu1", "--fingerprint", expected_fp, "--data-dir", data)
    assert out.returncode == 0, out.stderr

    out = cli("hosts", "add", "--data-dir", data, "--name", "cpu1", "--address", plain.address,
              "--port", "22", "--user", "root", "--key-file", key, "--accept-host-key")
    assert out.returncode == 0 and "accepted" in out.stdout, out.stdout + out.stderr

    out = cli("hosts", "check", "gpu1", "--data-dir", data, "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert report["ok"] and report["facts"]["accelerator"]["catalog_id"] == "h100-sxm"
    assert report["facts"]["accelerator"]["count"] == 8
    out = cli("hosts", "check", "gpu1", "--data-dir", data)
    assert "8 x NVIDIA H100 80GB HBM3 -> catalog h100-sxm" in out.stdout
    assert "AVX-512 AMX" in out.stdout
    assert "[gpu1] nvidia-smi: ok" in out.stderr  # live lines while it runs

    out = cli("install", "preflight", "--hosts", "gpu1,cpu1", "--dry-run", "--data-dir", data)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "[cpu1] memory: ok" in out.stdout and "[gpu1] gather: ok" in out.stdout
    assert "install ins_" in out.stdout

    out = cli("hosts", "list", "--data-dir", data, "--json")
    listed = {h["name"]: h for h in json.loads(out.stdout)}
    assert listed["gpu1"]["host_key_fingerprint"] == expected_fp
    assert "secret" not in out.stdout and "PRIVATE KEY" not in out.stdout
    out = cli("hosts", "list", "--data-dir", data)
    assert "8x h100-sxm" in out.stdout
    assert cli("hosts", "remove", "cpu1", "--data-dir", data).returncode == 0
    out = cli("hosts", "list", "--data-dir", data, "--json")
    assert [h["name"] for h in json.loads(out.stdout)] == ["gpu1"]
    # the secret is sealed at rest
    import sqlite3

    row = sqlite3.connect(Path(data) / "state.db").execute(
        "SELECT secret FROM hosts WHERE name='gpu1'").fetchone()
    assert row[0].startswith("enc1.") and "PRIVATE KEY" not in row[0]
