"""Where the console's templates and static files live, in a checkout and in the frozen binary."""

from __future__ import annotations

import hashlib
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import jinja2

import appliance


def web_root() -> Path:
    """The ``web/`` folder: beside the package in a checkout, under ``sys._MEIPASS`` frozen."""
    frozen = getattr(sys, "_MEIPASS", None)
    if frozen:
        return Path(frozen) / "web"
    return Path(appliance.__file__).resolve().parent.parent / "web"


def template_env(root: Path) -> jinja2.Environment:
    """One Jinja environment per application; autoescaped, undefined names are errors."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(root / "templates"),
        autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True, lstrip_blocks=True,
        auto_reload=False,
    )
    env.globals["asset"] = AssetUrls(root / "static")
    env.filters.update(shorttime=shorttime, isotime=isotime, size=size, num=num)
    return env


def shorttime(ts: float | None) -> str:
    """A timestamp as the server's local date and time."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else ""


def isotime(ts: float | None) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat() if ts else ""


def size(n: int | float | None) -> str:
    """Bytes in binary units: 91.6 MiB."""
    value = float(n or 0)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def num(n: int | float | None, digits: int = 0) -> str:
    """A number with thousands separators ('—' for none)."""
    if n is None:
        return "—"
    return f"{n:,.{digits}f}"


class AssetUrls:
    """``asset('app.css')`` → ``/static/app.css?v=<hash>`` so browsers may cache for long."""

    def __init__(self, static: Path) -> None:
        self.static = static
        # hashed once at start-up, so no page render reads a file on the event loop
        self._versions: dict[str, str] = {}
        if static.is_dir():
            for path in static.rglob("*"):
                if path.is_file():
                    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
                    self._versions[path.relative_to(static).as_posix()] = digest

    def __call__(self, name: str) -> str:
        return f"/static/{name}?v={self._versions.get(name, 'missing')}"

    def exists(self, name: str) -> bool:
        """Whether a static file is there (vendor files come from `make web`)."""
        return name in self._versions
