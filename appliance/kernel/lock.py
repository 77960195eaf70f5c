"""Single-instance lock on the data directory."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from appliance.kernel.errors import ConfigError


class DataDirLock:
    """An exclusive ``flock`` on ``DATA_DIR/appliance.lock`` held for the life of the server."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "appliance.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise ConfigError naming the process that holds it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise ConfigError(
                f"data directory {self.path.parent} is in use by pid {holder}; "
                "stop that server or choose another --data-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def release(self) -> None:
        """Release the lock (idempotent)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
