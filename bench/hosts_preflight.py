"""Preflight across N hosts in parallel (default 20): real sshd hosts in network namespaces.

    sudo .venv/bin/python bench/hosts_preflight.py [--hosts 20] [--connect-limit 16]

Starts N hosts (tests/cluster/testhosts.py: sshd in its own network namespace and overlay
root each), adds them to a fresh inventory with their keys accepted, then times one preflight
run over all of them (connect + 12 steps per host) and a second run on the warm connections.
Prints a table per host and a one-line summary. Needs root, iproute2 and openssh-server.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PLAYBOOKS = REPO / "playbooks"
sys.path.insert(0, str(REPO))

from appliance.cluster.inventory import HostInput  # noqa: E402
from appliance.cluster.service import HostService  # noqa: E402
from appliance.settings import ClusterSettings  # noqa: E402
from appliance.store.state import StateStore  # noqa: E402
from tests.cluster.testhosts import host_farm  # noqa: E402


async def bench(n: int, connect_limit: int, root: Path) -> int:
    with host_farm(root / "hosts") as farm:
        started = time.monotonic()
        hosts = [farm.create(f"h{i:02d}") for i in range(n)]
        for h in hosts:
            h.start()
        boot_s = time.monotonic() - started
        store = await StateStore(root / "data").open()
        service = HostService(store, root / "data", ClusterSettings(
            connect_limit=connect_limit, playbooks_dir=str(PLAYBOOKS)))
        try:
            key = farm.client_key.read_text()
            t0 = time.monotonic()
            await asyncio.gather(*(service.add_host(HostInput(
                name=h.name, address=h.address, private_key=key), accept_host_key=True)
                for h in hosts))
            add_s = time.monotonic() - t0
            names = [h.name for h in hosts]
            t0 = time.monotonic()
            _, cold = await service.run_playbook("preflight", names)
            cold_s = time.monotonic() - t0
            t0 = time.monotonic()
            _, warm = await service.run_playbook("preflight", names)
            warm_s = time.monotonic() - t0
        finally:
            await service.close()
            await store.close()

    print(f"{'host':6} {'status':8} {'ok':>3} {'warn':>4} {'failed':>6} {'cold s':>7} "
          f"{'warm s':>7}  clock skew")
    per_host = []
    for name in names:
        c, w = cold[name], warm[name]
        cs, ws = sum(s.duration_s for s in c.steps), sum(s.duration_s for s in w.steps)
        per_host.append(ws)
        counts = c.counts()
        skew = (c.facts.get("clock") or {}).get("skew_s")
        print(f"{name:6} {c.status:8} {counts.get('ok', 0):>3} {counts.get('warn', 0):>4} "
              f"{counts.get('failed', 0):>6} {cs:>7.2f} {ws:>7.2f}  {skew}")
    ok = sum(r.status == "success" for r in cold.values())
    print(f"\npreflight on {n} hosts in parallel: {ok}/{n} ok; cold run (connect + 12 steps) "
          f"{cold_s:.2f} s, warm run {warm_s:.2f} s (median host {statistics.median(per_host):.2f}"
          f" s); {n} hosts booted in {boot_s:.1f} s, added with keys in {add_s:.2f} s "
          f"(connect limit {connect_limit})")
    return 0 if ok == n else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hosts", type=int, default=20)
    parser.add_argument("--connect-limit", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fa-bench-hosts-") as tmp:
        return asyncio.run(bench(args.hosts, args.connect_limit, Path(tmp)))


if __name__ == "__main__":
    sys.exit(main())
