#!/usr/bin/env python3
"""Server-side render time of every console page with 10,000 usage rows in the metrics DB.

Starts the appliance in-process (engines off) on a loopback port, records ROWS requests
spread over the last day (20 keys, 6 models, 3 projects) through the real metrics writer,
signs in with an admin key and fetches each page REPEAT times. Prints P50/P95/max per page
and a one-line summary against the 200 ms budget.

    python bench/ui_render.py [--rows 10000] [--repeat 20]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from appliance.app import SERVICES, build_app  # noqa: E402
from appliance.gateway.keys import create_key  # noqa: E402
from appliance.settings import load_settings  # noqa: E402
from appliance.store.metrics import RequestRecord  # noqa: E402
from appliance.ui.auth import SESSION_COOKIE  # noqa: E402

PAGES = ["/", "/usage", "/usage?group_by=key&window=30d", "/models", "/routes", "/playground",
         "/keys", "/access", "/audit", "/bundles", "/registry", "/simulator", "/ui/usage.csv"]
BUDGET_MS = 200.0


def records(n: int, key_ids: list[str]) -> list[RequestRecord]:
    rng = random.Random(5)
    now = time.time()
    models = [f"model-{i}" for i in range(6)]
    out = []
    for i in range(n):
        status = 200 if rng.random() > 0.03 else rng.choice([429, 500, 502])
        out.append(RequestRecord(
            ts=now - rng.random() * 86400, request_id=f"bench-{i}", endpoint="chat/completions",
            model=rng.choice(models), route="", target="local:model", key_id=rng.choice(key_ids),
            project_id=rng.choice(["default", "research", "support"]), status=status, error="",
            stream=True, prompt_tokens=rng.randint(10, 900), completion_tokens=rng.randint(1, 400),
            ttft_ms=rng.uniform(20, 900), latency_ms=rng.uniform(100, 9000)))
    return out


async def main(rows: int, repeat: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(overrides={
            "data_dir": str(Path(tmp) / "data"), "starter_bundle": str(Path(tmp) / "none"),
            "engine": {"enabled": False}}, environ={})
        app = build_app(settings)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        url = f"http://127.0.0.1:{port}"
        services = app[SERVICES]
        admin = await create_key(services.store, name="bench", role="admin")
        keys = [(await create_key(services.store, name=f"app-{i}")).id for i in range(20)]
        for rec in records(rows, keys):
            services.metrics.record(rec)
        counted = await asyncio.wrap_future(services.metrics.query(
            lambda c: c.execute("SELECT count(*) FROM requests").fetchone()[0]))
        results = []
        async with aiohttp.ClientSession(cookies={SESSION_COOKIE: admin.key}) as http:
            for path in PAGES:
                times = []
                for _ in range(repeat + 1):
                    started = time.perf_counter()
                    async with http.get(url + path) as resp:
                        await resp.read()
                        assert resp.status == 200, (path, resp.status)
                    times.append((time.perf_counter() - started) * 1000)
                times = times[1:]  # the first one warms template and query caches
                times.sort()
                results.append((path, statistics.median(times),
                                times[max(0, int(len(times) * 0.95) - 1)], times[-1]))
        await runner.cleanup()
    print(f"console pages, {counted:,} usage rows in the metrics DB, {repeat} fetches each")
    print(f"{'page':38} {'P50 ms':>8} {'P95 ms':>8} {'max ms':>8}")
    for path, p50, p95, worst in results:
        print(f"{path:38} {p50:8.1f} {p95:8.1f} {worst:8.1f}")
    slowest = max(results, key=lambda r: r[2])
    verdict = "within" if slowest[2] < BUDGET_MS else "OVER"
    print(f"summary: slowest P95 {slowest[2]:.1f} ms ({slowest[0]}), {verdict} the "
          f"{BUDGET_MS:.0f} ms budget with {counted:,} rows")
    return 0 if verdict == "within" else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.rows, args.repeat)))
