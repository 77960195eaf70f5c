#!/usr/bin/env python3
"""Gateway overhead: a zero-latency upstream called directly and through the appliance.

Load comes from `wrk` (Debian package) in its own process; the upstream and the appliance run
in their own processes too. Auth and metering are on. Prints req/s and P50/P99 per concurrency
and the latency the gateway adds; `--tokens` also compares the starter model's tokens/s through
the gateway with the llama.cpp worker called directly; `--peers` adds LiteLLM proxy and
TensorZero (bench/peers.py: a side venv, set up from PyPI on first use) against the same upstream.

    python bench/gateway.py [--duration 10] [--tokens] [--peers]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import peers  # bench/peers.py: this script's folder is first on sys.path

ROOT = Path(__file__).resolve().parent.parent


def bench_body(model: str = "bench") -> str:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]})


BODY = bench_body()


class WrkError(RuntimeError):
    """A wrk run that saw non-2xx answers."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not come up")


def wrk(url: str, key: str, conns: int, duration: int,
        model: str = "bench") -> tuple[float, float, float]:
    """(req/s, p50 ms, p99 ms) from one wrk run."""
    script = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
    script.write(f'wrk.method = "POST"\nwrk.body = {json.dumps(bench_body(model))}\n'
                 f'wrk.headers["Content-Type"] = "application/json"\n'
                 f'wrk.headers["Authorization"] = "Bearer {key}"\n')
    script.close()
    out = subprocess.run(["wrk", "-t1", f"-c{conns}", f"-d{duration}s", "--latency",
                          "-s", script.name, url], capture_output=True, text=True, check=True)
    os.unlink(script.name)
    text = out.stdout
    if "Non-2xx" in text:
        raise WrkError(f"errors during the run:\n{text}")
    if "Socket errors" in text:  # timeouts are left out of wrk's percentiles: say so
        print(f"note: {url} at concurrency {conns}: "
              f"{re.search(r'Socket errors:.*', text).group(0)}", flush=True)  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))  # type: ignore[union-attr]

    def pct(p: str) -> float:
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", text)
        assert m, text
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value
    return rps, pct("50"), pct("99")


def starter_gguf() -> Path:
    """The chat model's file inside the starter bundle (built by `make bundle`)."""
    root = Path.home() / ".cache" / "foundry-appliance" / "bundles" / "starter"
    manifest = json.loads((root / "bundle.json").read_text())
    entry = next(c for c in manifest["contents"] if c["name"] == "smollm2-135m-instruct")
    oci = json.loads((root / "blobs" / "sha256" / entry["manifest"][7:]).read_text())
    return root / "blobs" / "sha256" / oci["layers"][0]["digest"][7:]


def chat_tokens_per_s(url: str, key: str, runs: int) -> list[float]:
    rates = []
    for _ in range(runs):
        req = urllib.request.Request(url, method="POST", data=json.dumps({
            "model": "smollm2-135m-instruct", "max_tokens": 128, "temperature": 0,
            "messages": [{"role": "user", "content": "Write a long story about a lighthouse."}],
        }).encode(), headers={"Authorization": f"Bearer {key}",
                              "Content-Type": "application/json"})
        started = time.perf_counter()
        with urllib.request.urlopen(req, timeout=120) as resp:
            body = json.loads(resp.read())
        rates.append(body["usage"]["completion_tokens"] / (time.perf_counter() - started))
    return rates


def measure_tokens(work: Path, env: dict[str, str], runs: int = 5) -> None:
    """Starter model tokens/s: the llama.cpp worker directly vs through the gateway."""
    engine_port, gw_port = free_port(), free_port()
    token = "bench-engine-token"
    procs = [subprocess.Popen(
        [sys.executable, "-m", "appliance", "engine", "--name", "smollm2-135m-instruct",
         "--task", "chat", "--file", f"model.gguf={starter_gguf()}", "--port", str(engine_port),
         "--threads", "1"], env={**env, "APPLIANCE_ENGINE_TOKEN": token},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    config = work / "tokens.toml"
    config.write_text(f'[[upstreams]]\nname = "engine"\nbase_url = '
                      f'"http://127.0.0.1:{engine_port}/v1"\napi_key = "{token}"\n'
                      f'[[routes]]\nmodel = "smollm2-135m-instruct"\ntargets = ["engine"]\n'
                      f'[engine]\nenabled = false\n')
    data = work / "tokens-data"
    procs.append(subprocess.Popen(
        [sys.executable, "-m", "appliance", "serve", "--config", str(config), "--data-dir",
         str(data), "--listen", f"127.0.0.1:{gw_port}"], env=env, stderr=subprocess.DEVNULL))
    try:
        wait_http(f"http://127.0.0.1:{engine_port}/health")
        wait_http(f"http://127.0.0.1:{gw_port}/ready")
        key = json.loads(subprocess.run(
            [sys.executable, "-m", "appliance", "keys", "create", "--data-dir", str(data),
             "--name", "bench", "--json"], capture_output=True, text=True, env=env,
            check=True).stdout)["key"]
        chat_tokens_per_s(f"http://127.0.0.1:{engine_port}/v1/chat/completions", token, 1)
        direct, through = [], []
        for _ in range(runs):  # interleaved so machine load hits both alike
            direct += chat_tokens_per_s(
                f"http://127.0.0.1:{engine_port}/v1/chat/completions", token, 1)
            through += chat_tokens_per_s(
                f"http://127.0.0.1:{gw_port}/v1/chat/completions", key, 1)
        d, t = statistics.median(direct), statistics.median(through)
        print(f"\n{'path':>10} | {'tokens/s (median of ' + str(runs) + ')':>26}")
        print(f"{'direct':>10} | {d:>26.1f}\n{'gateway':>10} | {t:>26.1f}")
        print(f"summary: starter model through the gateway runs at {100 * t / d:.1f}% of "
              f"calling the llama.cpp worker directly (goal: within 3%)")
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
            p.wait(30)


Result = tuple[float, float, float] | str  # (req/s, p50, p99), or why that run failed


def measure_peers(up_port: int, work: Path, concs: list[int], duration: int,
                  results: dict[str, dict[int, Result]], missing: dict[str, str]) -> None:
    """Each peer in turn, against the same upstream, at the same concurrencies."""
    bindir = peers.ensure_venv()
    for name in peers.STARTERS:
        try:
            with peers.running(name, bindir, up_port, work, bench_body) as peer:
                results[name] = {}
                for conns in concs:
                    try:
                        results[name][conns] = wrk(peer.url, peer.key, conns, duration,
                                                   peer.model)
                    except WrkError as e:
                        results[name][conns] = "failed: non-2xx answers"
                        print(f"peers: {name} at concurrency {conns}: {e}", flush=True)
        except peers.PeerError as e:
            missing[name] = str(e).splitlines()[0]
            print(f"peers: {name} not measured: {e}", flush=True)


def print_table(concs: list[int], results: dict[str, dict[int, Result]],
                missing: dict[str, str]) -> None:
    print(f"\n{'system':<11} | {'concurrency':>11} | {'req/s':>8} | {'P50 ms':>8} | "
          f"{'P99 ms':>8} | {'added P50 ms':>12}")
    print("-" * 75)
    for conns in concs:
        direct = results["direct"][conns]
        assert not isinstance(direct, str)  # a failed direct run stops the bench
        for system, by_conc in results.items():
            r = by_conc[conns]
            if isinstance(r, str):
                print(f"{system:<11} | {conns:>11} | {r}")
                continue
            added = f"{r[1] - direct[1]:>12.2f}" if system != "direct" else f"{'-':>12}"
            print(f"{system:<11} | {conns:>11} | {r[0]:>8.0f} | {r[1]:>8.2f} | {r[2]:>8.2f} | "
                  f"{added}")
    for system, why in missing.items():
        print(f"{system:<11} | not measured: {why}")
    ok = {c: r for c, r in results["appliance"].items() if not isinstance(r, str)}
    best = max(r[0] for r in ok.values())
    direct1 = results["direct"].get(1)
    added = ok[1][1] - direct1[1] if 1 in ok and isinstance(direct1, tuple) else float("nan")
    print(f"summary: gateway peak {best:.0f} req/s (floor 2000), added P50 at "
          f"concurrency 1 {added:.2f} ms (floor 1 ms)")
    peer_peaks = [f"{system} {max(r[0] for r in by.values() if not isinstance(r, str)):.0f}"
                  for system, by in results.items() if system not in ("direct", "appliance")
                  and any(not isinstance(r, str) for r in by.values())]
    if peer_peaks:
        print(f"peers (peak req/s, same upstream and wrk): {', '.join(peer_peaks)}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=int, default=10, help="seconds per run")
    ap.add_argument("--concurrency", default="1,16,64")
    ap.add_argument("--tokens", action="store_true",
                    help="also measure starter-model tokens/s (needs the starter bundle)")
    ap.add_argument("--peers", action="store_true",
                    help="also measure LiteLLM proxy and TensorZero (side venv; first use "
                         "downloads from PyPI)")
    args = ap.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is missing: apt-get install -y wrk")
    work = Path(tempfile.mkdtemp(prefix="bench-gw-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        up_port, gw_port = free_port(), free_port()
        procs.append(subprocess.Popen([sys.executable, str(ROOT / "bench" / "zero_upstream.py"),
                                       str(up_port)]))
        config = work / "bench.toml"
        config.write_text(f'[[upstreams]]\nname = "zero"\nbase_url = '
                          f'"http://127.0.0.1:{up_port}/v1"\n[[routes]]\nmodel = "bench"\n'
                          f'targets = ["zero"]\n[engine]\nenabled = false\n')
        env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
        env["APPLIANCE_STARTER_BUNDLE"] = str(work / "none")
        data = work / "data"
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "appliance", "serve", "--config", str(config), "--data-dir",
             str(data), "--listen", f"127.0.0.1:{gw_port}"], env=env,
            stderr=subprocess.DEVNULL))
        wait_http(f"http://127.0.0.1:{up_port}/v1/chat/completions")
        wait_http(f"http://127.0.0.1:{gw_port}/ready")
        key = json.loads(subprocess.run(
            [sys.executable, "-m", "appliance", "keys", "create", "--data-dir", str(data),
             "--name", "bench", "--json"], capture_output=True, text=True, env=env,
            check=True).stdout)["key"]
        concs = [int(c) for c in args.concurrency.split(",")]
        results: dict[str, dict[int, Result]] = {"direct": {}, "appliance": {}}
        try:
            for conns in concs:
                results["direct"][conns] = wrk(
                    f"http://127.0.0.1:{up_port}/v1/chat/completions", key, conns, args.duration)
                results["appliance"][conns] = wrk(
                    f"http://127.0.0.1:{gw_port}/v1/chat/completions", key, conns, args.duration)
        except WrkError as e:
            raise SystemExit(str(e)) from None
        missing: dict[str, str] = {}
        if args.peers:
            measure_peers(up_port, work, concs, args.duration, results, missing)
        print_table(concs, results, missing)
        if args.tokens:
            measure_tokens(work, env)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
