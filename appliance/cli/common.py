"""Helpers shared by command modules: data dir and config options, output, the state store."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from appliance.kernel.errors import ApplianceError, ConfigError
from appliance.settings import Settings, load_settings
from appliance.store.state import StateStore

T = TypeVar("T")


def add_common(p: argparse.ArgumentParser, *, json_flag: bool = True) -> None:
    """--config, --data-dir and (optionally) --json, the same on every command."""
    p.add_argument("--config", type=Path, metavar="FILE",
                   help="TOML settings file (default: $APPLIANCE_CONFIG)")
    p.add_argument("--data-dir", type=Path, metavar="DIR",
                   help="data directory (default: from the config, $APPLIANCE_DATA_DIR, or "
                   "~/.local/share/foundry-appliance)")
    if json_flag:
        p.add_argument("--json", action="store_true", help="print machine-readable JSON")


def settings_from(args: argparse.Namespace, **overrides: Any) -> Settings:
    data_dir = getattr(args, "data_dir", None)
    return load_settings(getattr(args, "config", None),
                         overrides={"data_dir": str(data_dir) if data_dir else None, **overrides})


def fail(message: str, code: int = 1) -> int:
    print(f"appliance: error: {message}", file=sys.stderr)
    return code


def run_with_store(args: argparse.Namespace,
                   body: Callable[[StateStore, Settings], Awaitable[int]]) -> int:
    """Open the data dir's state (works while a server runs on it) and run ``body``."""
    try:
        settings = settings_from(args)
    except ConfigError as exc:
        return fail(exc.message, 2)

    async def main() -> int:
        store = StateStore(settings.data_path)
        await store.open()
        try:
            return await body(store, settings)
        finally:
            await store.close()

    try:
        return asyncio.run(main())
    except ApplianceError as exc:
        return fail(exc.message, 2 if exc.status == 400 else 1)


def print_json(data: Any) -> None:
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(data)).decode() + "\n")


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A plain aligned table, like `kubectl get`."""
    cells = [[str(h).upper() for h in headers]] + [
        ["-" if v is None or v == "" else str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=False)).rstrip())


def csv_list(text: str | None) -> list[str]:
    return [x.strip() for x in (text or "").split(",") if x.strip()]
