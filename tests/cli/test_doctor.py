"""`appliance doctor`: each check on real sockets, files and a fake /dev, and the CLI's output."""

from __future__ import annotations

import http.server
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.cli import main
from appliance.cli.doctor_checks import (
    _record_lookups,
    check_cpu,
    check_data_dir,
    check_gpu,
    check_port,
    check_startup_lookups,
    check_upstreams,
    cpu_flags,
    is_private_host,
)
from appliance.settings import load_settings
from tests.conftest import free_port


def _doctor(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, object]]:
    code = main(["doctor", "--json", *args])
    return code, json.loads(capsys.readouterr().out)


def _by_name(report: dict[str, object]) -> dict[str, dict[str, str]]:
    checks = report["checks"]
    assert isinstance(checks, list)
    return {c["name"].split(" ")[0]: c for c in checks}


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["doctor", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--listen" in out and "--json" in out and "internet" in out


def test_doctor_passes_here(tmp_path: Path, starter_bundle: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    code, report = _doctor(capsys, "--data-dir", str(tmp_path / "data"),
                           "--listen", f"127.0.0.1:{port}")
    checks = _by_name(report)
    assert code == 0 and report["ok"] is True, report
    assert set(checks) >= {"data", "free", "port", "cpu", "gpu", "starter", "outbound", "no"}
    assert checks["port"]["status"] == "ok"
    assert not (tmp_path / "data").exists(), "doctor must not create the data dir"


def test_table_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["doctor", "--data-dir", str(tmp_path), "--listen", f"127.0.0.1:{free_port()}"])
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["CHECK", "STATUS", "DETAIL"]
    assert "failed" in out.splitlines()[-1]


def test_port_in_use_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, report = _doctor(capsys, "--data-dir", str(tmp_path),
                               "--listen", f"127.0.0.1:{port}")
    assert code == 1 and report["ok"] is False
    assert _by_name(report)["port"]["status"] == "fail"


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_port_held_by_running_server_is_ok(health_server: int) -> None:
    check = check_port("127.0.0.1", health_server)
    assert check.status == "ok" and "running server" in check.detail


def test_data_dir_that_is_a_file_fails(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    assert check_data_dir(tmp_path / "file").status == "fail"
    assert check_data_dir(tmp_path).status == "ok"
    missing = check_data_dir(tmp_path / "a" / "b")
    assert missing.status == "ok" and "does not exist yet" in missing.detail


def test_cpu_flags(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx avx2 fma f16c avx512f amx_tile\n")
    flags = cpu_flags(info)
    assert {"avx2", "avx512f", "amx_tile"} <= flags
    ok = check_cpu(flags)
    assert ok.status == "ok" and "avx512f" in ok.detail and "amx" in ok.detail
    old = check_cpu({"sse", "avx"})
    assert old.status == "fail" and "avx2" in old.detail
    assert check_cpu(set()).status == "warn"
    assert cpu_flags(tmp_path / "missing") == set()


def test_gpu_from_device_nodes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))  # no nvidia-smi
    assert "none found" in check_gpu(tmp_path).detail
    (tmp_path / "nvidia0").touch()
    (tmp_path / "nvidia1").touch()
    (tmp_path / "nvidiactl").touch()
    (tmp_path / "kfd").touch()
    found = check_gpu(tmp_path)
    assert found.status == "info"
    assert "2 NVIDIA" in found.detail and "ROCm" in found.detail


def test_nvidia_smi_is_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'NVIDIA H100 80GB HBM3, 81559 MiB'\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    assert "H100" in check_gpu(tmp_path).detail


@pytest.mark.parametrize(("host", "private"), [
    ("127.0.0.1", True), ("10.1.2.3", True), ("192.168.0.9", True), ("fd00::1", True),
    ("localhost", True), ("gpu-a", True), ("vllm.site.internal", True),
    ("8.8.8.8", False), ("api.openai.com", False), ("2001:4860::8888", False),
])
def test_private_hosts(host: str, private: bool) -> None:
    assert is_private_host(host) is private


def test_public_upstream_warns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[[upstreams]]\nname = "lab"\nbase_url = "http://10.0.0.5:8000/v1"\n'
                      '[[upstreams]]\nname = "openai"\nbase_url = "https://api.openai.com/v1"\n')
    settings = load_settings(config, overrides={"data_dir": str(tmp_path / "d")}, environ={})
    check = check_upstreams(settings)
    assert check.status == "warn" and "openai" in check.detail and "lab" not in check.detail
    private = load_settings(None, overrides={"data_dir": str(tmp_path / "d")}, environ={})
    assert check_upstreams(private).status == "ok"


def test_no_lookups_while_building_the_app(tmp_path: Path) -> None:
    settings = load_settings(None, overrides={"data_dir": str(tmp_path)}, environ={})
    assert check_startup_lookups(settings).status == "ok"
    named = load_settings(None, overrides={"data_dir": str(tmp_path),
                                           "listen": "appliance.example:8080"}, environ={})
    assert check_startup_lookups(named).status == "warn"


def test_lookup_recorder_refuses_and_records() -> None:
    with _record_lookups() as seen, pytest.raises(OSError):
        socket.getaddrinfo("example.com", 443)
    assert seen and "example.com" in seen[0]
    assert socket.getaddrinfo("127.0.0.1", 80)  # restored afterwards
