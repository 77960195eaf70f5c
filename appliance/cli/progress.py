"""A terminal progress bar for long work: bytes, percent, rate and ETA on one line."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


class ProgressBar:
    """Redraws at most 10 times a second; prints plain lines when not on a terminal."""

    def __init__(self, label: str, *, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = self.stream.isatty()
        self.started = time.monotonic()
        self._last = 0.0
        self._last_pct = -10

    def update(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        pct = 100.0 * done / total if total else 100.0
        if self.tty:
            if now - self._last < 0.1 and done < total:
                return
        elif pct - self._last_pct < 10 and done < total:
            return
        self._last, self._last_pct = now, int(pct)
        elapsed = max(now - self.started, 1e-6)
        rate = done / elapsed
        eta = (total - done) / rate if rate > 0 else 0
        width = 30
        filled = int(width * pct / 100)
        bar = "#" * filled + "-" * (width - filled)
        line = (f"{self.label} [{bar}] {pct:5.1f}% {_size(done)}/{_size(total)} "
                f"{_size(rate)}/s ETA {eta:4.0f}s")
        if self.tty:
            self.stream.write("\r" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()
