"""Running the host's programs (systemctl, useradd, nvidia-smi, another binary) from here.

Inside the one-file binary PyInstaller points ``LD_LIBRARY_PATH`` at its bundled libraries and
marks child processes as parts of this program (``_PYI_*``). A host tool or a different
appliance binary must start with the host's own environment instead.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence

from appliance.buildinfo import is_frozen


def host_env() -> dict[str, str]:
    """This process's environment as the host set it, without PyInstaller's changes."""
    env = dict(os.environ)
    if is_frozen():
        original = env.pop("LD_LIBRARY_PATH_ORIG", None)
        if original is None:
            env.pop("LD_LIBRARY_PATH", None)
        else:
            env["LD_LIBRARY_PATH"] = original
    for key in [k for k in env if k.startswith("_PYI_") or k == "_MEIPASS2"]:
        del env[key]
    # a different appliance binary started from here must unpack itself, not reuse our files
    env["PYINSTALLER_RESET_ENVIRONMENT"] = "1"
    return env


def run_host(cmd: Sequence[str], *, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run a host program with the host's environment; output captured, never raises on rc."""
    return subprocess.run(list(cmd), env=host_env(), capture_output=True, text=True,
                          timeout=timeout, check=False)
