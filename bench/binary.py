"""Frozen binary: build time, size, and cold start to /ready, one-file vs one-folder.

    .venv/bin/python bench/binary.py                     # measure dist/ as built
    .venv/bin/python bench/binary.py --build             # time `make dist` and `make dist-onedir`
    .venv/bin/python bench/binary.py --build-log FILE    # take build times from a build log

Cold start: a new process on a new data dir until GET /ready answers 200 ("first start"
imports the starter bundle), then again on the same data dir ("restart"). The page cache stays
warm; each number is the median of --runs. Floors: binary < 150 MB, one-file restart < 4 s.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SIZE_FLOOR_MB = 150.0
START_FLOOR_S = 4.0
BUILT_RE = re.compile(r"== built \S+ \((onefile|onedir)\) in (\d+)s")


def free_port() -> int:
    """A loopback port nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def size_mb(path: Path) -> float:
    """Megabytes (10^6) of a file, or of a one-folder build's folder."""
    if path.is_file():
        return path.stat().st_size / 1e6
    return sum((Path(d) / f).lstat().st_size for d, _, fs in os.walk(path) for f in fs) / 1e6


def time_to_ready(binary: Path, data_dir: Path, starter: Path, timeout_s: float = 180) -> float:
    """Seconds from exec to /ready == 200; the server is stopped with SIGTERM afterwards."""
    port = free_port()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(data_dir.parent),
           "APPLIANCE_STARTER_BUNDLE": str(starter)}
    url = f"http://127.0.0.1:{port}/ready"
    started = time.perf_counter()
    proc = subprocess.Popen([str(binary), "serve", "--data-dir", str(data_dir),
                             "--listen", f"127.0.0.1:{port}"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{binary} exited with {proc.returncode} before /ready")
            try:
                with urllib.request.urlopen(url, timeout=1) as resp:
                    if resp.status == 200:
                        return time.perf_counter() - started
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.perf_counter() - started > timeout_s:
                raise RuntimeError(f"{binary} not ready after {timeout_s:.0f} s")
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def measure_starts(binary: Path, starter: Path, runs: int) -> tuple[float, float]:
    """Median first start (fresh data dir) and median restart (same data dir)."""
    first: list[float] = []
    again: list[float] = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory(prefix="bench-binary-") as tmp:
            data_dir = Path(tmp) / "data"
            first.append(time_to_ready(binary, data_dir, starter))
            again.append(time_to_ready(binary, data_dir, starter))
    return statistics.median(first), statistics.median(again)


def build_times(args: argparse.Namespace) -> dict[str, float]:
    """Build seconds per variant, from --build (timed here) or --build-log."""
    times: dict[str, float] = {}
    if args.build:
        for variant, target in (("onefile", "dist"), ("onedir", "dist-onedir")):
            started = time.perf_counter()
            subprocess.run(["make", target], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
            times[variant] = time.perf_counter() - started
    elif args.build_log:
        for match in BUILT_RE.finditer(Path(args.build_log).read_text()):
            times[match.group(1)] = float(match.group(2))
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onefile", type=Path, default=ROOT / "dist" / "appliance")
    parser.add_argument("--onedir", type=Path,
                        default=ROOT / "dist" / "appliance-onedir" / "appliance")
    parser.add_argument("--starter", type=Path, default=Path(os.environ.get(
        "APPLIANCE_STARTER_BUNDLE",
        Path.home() / ".cache" / "foundry-appliance" / "bundles" / "starter")))
    parser.add_argument("--runs", type=int, default=3, help="starts per variant (median)")
    parser.add_argument("--build", action="store_true", help="time make dist / dist-onedir")
    parser.add_argument("--build-log", help="build log with build/build.sh's '== built' lines")
    args = parser.parse_args()
    if not (args.starter / "bundle.json").is_file():
        print(f"no starter bundle at {args.starter}: run `make bundle`", file=sys.stderr)
        return 1
    builds = build_times(args)
    rows: list[tuple[str, float, float | None, float, float]] = []
    for variant, binary in (("onefile", args.onefile), ("onedir", args.onedir)):
        if not binary.is_file():
            print(f"skipping {variant}: no {binary}", file=sys.stderr)
            continue
        measured = binary if variant == "onefile" else binary.parent
        first, again = measure_starts(binary, args.starter, args.runs)
        rows.append((variant, size_mb(measured), builds.get(variant), first, again))
    if not rows:
        print("nothing to measure: run `make dist` first", file=sys.stderr)
        return 1
    print(f"{'variant':<9} {'size MB':>8} {'build s':>8} {'first start s':>14} {'restart s':>10}")
    for variant, size, build, first, again in rows:
        build_text = f"{build:.0f}" if build is not None else "-"
        print(f"{variant:<9} {size:>8.1f} {build_text:>8} {first:>14.2f} {again:>10.2f}")
    one = next((r for r in rows if r[0] == "onefile"), None)
    if one is not None:
        ok = one[1] < SIZE_FLOOR_MB and one[4] < START_FLOOR_S
        print(f"summary: onefile {one[1]:.0f} MB (floor {SIZE_FLOOR_MB:.0f}), restart to /ready "
              f"{one[4]:.2f} s, first start {one[3]:.2f} s (floor {START_FLOOR_S:.0f} s): "
              f"{'within floors' if ok else 'OUTSIDE FLOORS'} ({os.cpu_count()} cores)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
