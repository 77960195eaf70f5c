"""Where the installed appliance lives on a host, its systemd unit, and whether systemd runs.

Paths are absolute on the target host; ``under(prefix, path)`` places them below a staging root
(tests and image builds render into a temporary ``--prefix``).
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

SERVICE_NAME = "foundry-appliance"
BINARY_PATH = PurePosixPath("/usr/local/bin/foundry-appliance")
PREVIOUS_PATH = PurePosixPath("/usr/local/bin/foundry-appliance.previous")
UNIT_PATH = PurePosixPath(f"/etc/systemd/system/{SERVICE_NAME}.service")
DEFAULT_DATA_DIR = PurePosixPath("/var/lib/foundry-appliance")
DEFAULT_USER = "foundry-appliance"
DATA_DIR_MODE = 0o750
BINARY_MODE = 0o755
UNIT_MODE = 0o644
# systemd waits this much longer than the server's own drain before it kills
STOP_MARGIN_S = 15
_DATA_DIR_LINE = re.compile(r"^Environment=APPLIANCE_DATA_DIR=(.+)$", re.MULTILINE)


def under(prefix: Path, path: PurePosixPath) -> Path:
    """``path`` (absolute on the host) below the staging root ``prefix``."""
    return prefix / path.relative_to("/")


def systemd_running(root: Path = Path("/")) -> tuple[bool, str]:
    """Whether systemd is PID 1 here, and if not, why we think so."""
    try:
        comm = (root / "proc/1/comm").read_text().strip()
    except OSError:
        comm = "unknown"
    if comm != "systemd":
        return False, f"PID 1 is {comm!r}, not systemd"
    if not (root / "run/systemd/system").is_dir():
        return False, "/run/systemd/system is missing"
    return True, "systemd is PID 1"


def render_unit(*, user: str, data_dir: PurePosixPath, listen: str, shutdown_timeout_s: float,
                config: PurePosixPath | None = None,
                starter_bundle: PurePosixPath | None = None) -> str:
    """The hardened unit file text for ``foundry-appliance.service``."""
    port = int(listen.rpartition(":")[2])
    caps = "CAP_NET_BIND_SERVICE" if port < 1024 else ""
    exec_start = f"{BINARY_PATH} serve --data-dir {data_dir} --listen {listen}"
    if config is not None:
        exec_start += f" --config {config}"
    env = [f"Environment=APPLIANCE_DATA_DIR={data_dir}"]
    if starter_bundle is not None:
        env.append(f"Environment=APPLIANCE_STARTER_BUNDLE={starter_bundle}")
    stop_s = int(shutdown_timeout_s) + STOP_MARGIN_S
    return f"""\
# Written by `appliance install-service`; `appliance uninstall-service` removes it.
[Unit]
Description=Foundry Appliance (offline AI platform)
After=network.target

[Service]
Type=simple
User={user}
Group={user}
{chr(10).join(env)}
WorkingDirectory={data_dir}
ExecStart={exec_start}
KillSignal=SIGTERM
# SIGTERM to the server only: it drains requests and stops its engine workers itself
KillMode=mixed
TimeoutStopSec={stop_s}
Restart=on-failure
RestartSec=5
LimitNOFILE=65536
UMask=0027

# hardening: read-only system, no home directories, only the data dir is writable
NoNewPrivileges=yes
ProtectSystem=strict
ReadWritePaths={data_dir}
PrivateTmp=yes
ProtectHome=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
SystemCallArchitectures=native
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
CapabilityBoundingSet={caps}
AmbientCapabilities={caps}
# off: llama-cpp-python's ctypes callbacks (libffi closures) need writable+executable memory
MemoryDenyWriteExecute=no

[Install]
WantedBy=multi-user.target
"""


def unit_data_dir(unit_text: str) -> PurePosixPath | None:
    """The data directory an installed unit names (for uninstall --purge)."""
    match = _DATA_DIR_LINE.search(unit_text)
    return PurePosixPath(match.group(1).strip()) if match else None
