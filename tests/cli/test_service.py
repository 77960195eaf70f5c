"""`appliance install-service` / `uninstall-service`, rendered into a temporary --prefix."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from appliance.cli import main
from appliance.cli.service_unit import (
    BINARY_PATH,
    DEFAULT_DATA_DIR,
    UNIT_PATH,
    render_unit,
    systemd_running,
    under,
    unit_data_dir,
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _unit_keys(text: str) -> dict[str, list[str]]:
    """systemd's key=value lines (keys may repeat, like Environment)."""
    keys: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            keys.setdefault(key, []).append(value)
    return keys


@pytest.fixture
def binary(tmp_path: Path) -> Path:
    path = tmp_path / "src" / "appliance"
    path.parent.mkdir()
    path.write_text("#!/bin/sh\necho 'appliance 9.9.9 (test)'\n")
    return path


def _install(prefix: Path, binary: Path, *extra: str) -> int:
    return main(["install-service", "--prefix", str(prefix), "--binary", str(binary), *extra])


@pytest.mark.parametrize("command", ["install-service", "uninstall-service"])
def test_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--prefix" in out and ("--purge" in out or "--data-dir" in out)


def test_install_renders_files_with_modes(tmp_path: Path, binary: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    prefix = tmp_path / "root"
    assert _install(prefix, binary) == 0
    out = capsys.readouterr().out
    assert "systemctl not called" in out

    installed = under(prefix, BINARY_PATH)
    assert installed.read_bytes() == binary.read_bytes()
    assert _mode(installed) == 0o755
    data_dir = under(prefix, DEFAULT_DATA_DIR)
    assert data_dir.is_dir() and _mode(data_dir) == 0o750
    unit = under(prefix, UNIT_PATH)
    assert _mode(unit) == 0o644

    keys = _unit_keys(unit.read_text())
    assert keys["ExecStart"] == [f"{BINARY_PATH} serve --data-dir {DEFAULT_DATA_DIR} "
                                 "--listen 127.0.0.1:8080"]
    assert keys["User"] == ["foundry-appliance"]
    expected = {
        "NoNewPrivileges": "yes", "ProtectSystem": "strict", "PrivateTmp": "yes",
        "ProtectHome": "yes", "MemoryDenyWriteExecute": "no", "Restart": "on-failure",
        "ReadWritePaths": str(DEFAULT_DATA_DIR), "LimitNOFILE": "65536",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6", "KillSignal": "SIGTERM",
        "WantedBy": "multi-user.target", "CapabilityBoundingSet": "",
    }
    for key, value in expected.items():
        assert keys[key] == [value], key
    # systemd must wait longer than the server's own drain (30 s by default)
    assert int(keys["TimeoutStopSec"][0]) > 30
    assert unit_data_dir(unit.read_text()) == DEFAULT_DATA_DIR


def test_install_options(tmp_path: Path, binary: Path) -> None:
    prefix = tmp_path / "root"
    config = under(prefix, Path("/etc/foundry-appliance/config.toml"))  # type: ignore[arg-type]
    config.parent.mkdir(parents=True)
    config.write_text("[server]\nshutdown_timeout_s = 60\n")
    assert _install(prefix, binary, "--data-dir", "/srv/fa", "--user", "fa",
                    "--listen", "0.0.0.0:443", "--config", "/etc/foundry-appliance/config.toml",
                    "--starter-bundle", "/srv/bundles/starter") == 0
    keys = _unit_keys(under(prefix, UNIT_PATH).read_text())
    assert keys["TimeoutStopSec"] == ["75"]
    assert keys["User"] == ["fa"] and keys["ReadWritePaths"] == ["/srv/fa"]
    assert keys["ExecStart"][0].endswith(
        "--listen 0.0.0.0:443 --config /etc/foundry-appliance/config.toml")
    assert keys["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
    assert "APPLIANCE_STARTER_BUNDLE=/srv/bundles/starter" in keys["Environment"]
    assert _mode(prefix / "srv" / "fa") == 0o750


def test_install_twice_is_idempotent(tmp_path: Path, binary: Path) -> None:
    prefix = tmp_path / "root"
    assert _install(prefix, binary) == 0
    first = under(prefix, UNIT_PATH).read_text()
    assert _install(prefix, binary) == 0
    assert under(prefix, UNIT_PATH).read_text() == first
    assert not list(under(prefix, BINARY_PATH).parent.glob(".*tmp*"))


def test_refuses_a_checkout_without_binary(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["install-service", "--prefix", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "make dist" in err and "--binary" in err
    assert not (tmp_path / "etc").exists()


def test_uninstall_keeps_data_unless_purged(tmp_path: Path, binary: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    prefix = tmp_path / "root"
    assert _install(prefix, binary) == 0
    data_dir = under(prefix, DEFAULT_DATA_DIR)
    (data_dir / "state.db").write_text("precious")
    assert main(["uninstall-service", "--prefix", str(prefix)]) == 0
    assert "kept data" in capsys.readouterr().out
    assert not under(prefix, UNIT_PATH).exists() and not under(prefix, BINARY_PATH).exists()
    assert (data_dir / "state.db").read_text() == "precious"

    assert _install(prefix, binary) == 0
    assert main(["uninstall-service", "--prefix", str(prefix), "--purge"]) == 0
    assert not data_dir.exists()


def test_systemd_detection(tmp_path: Path) -> None:
    (tmp_path / "proc/1").mkdir(parents=True)
    (tmp_path / "proc/1/comm").write_text("tini\n")
    running, why = systemd_running(tmp_path)
    assert not running and "tini" in why
    (tmp_path / "proc/1/comm").write_text("systemd\n")
    assert not systemd_running(tmp_path)[0]
    (tmp_path / "run/systemd/system").mkdir(parents=True)
    assert systemd_running(tmp_path) == (True, "systemd is PID 1")


def test_render_unit_has_no_template_holes() -> None:
    text = render_unit(user="u", data_dir=DEFAULT_DATA_DIR, listen="127.0.0.1:8080",
                       shutdown_timeout_s=30)
    assert "{" not in text and "}" not in text
    assert text.startswith("#") and "[Service]" in text and "[Install]" in text
