"""Hosts, facts and deployments for the console's pages, written straight into a state database.

The facts come from the cluster parsers run on real machines' outputs (tests/cluster/data), so
the pages show what a detected DGX H100 looks like without SSH.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from appliance.cluster.facts import PARSERS, ParseContext, summarize
from appliance.store.state import STATE_FILE

DATA = Path(__file__).resolve().parents[1] / "cluster" / "data"
FINGERPRINT = "SHA256:pR8vG0bWq1u3m3yYb7oQ8cQxN5Yt2xkQ2a4vB1uT7Zk"


def h100_facts() -> dict[str, Any]:
    """Facts of an 8 x H100 host: preflight, clock, CPU, memory, GPUs, NICs, disks."""
    ctx = ParseContext(sent_at=time.time(), received_at=time.time() + 0.004)
    facts: dict[str, Any] = {}
    facts |= PARSERS["nvidia_smi"]((DATA / "nvidia-smi-h100-query.csv").read_text(), ctx)
    facts |= PARSERS["lspci"]((DATA / "lspci-dgx-h100.txt").read_text(), ctx)
    facts |= PARSERS["lscpu"]((DATA / "lscpu-xeon-8480.txt").read_text(), ctx)
    facts |= PARSERS["meminfo"]("MemTotal: 2113459200 kB\nMemAvailable: 2010000000 kB\n"
                                "SwapTotal: 0 kB\nHugePages_Total: 0\n", ctx)
    facts |= PARSERS["clock"](f"{time.time() + 0.12:.6f}", ctx)
    facts["preflight"] = {
        "os": "Ubuntu 22.04.4 LTS", "os_id": "ubuntu", "os_version": "22.04",
        "kernel": "5.15.0-105-generic", "hostname": "gpu-01", "hostname_resolves": True,
        "cpus": 224, "memory_mib": 2063925, "memory_available_mib": 1962890, "swap_mib": 0,
        "disk_free_mib": {"/": 812345, "/var/lib": 3400000}, "listening_ports": [22, 9100],
        "init": "systemd-running", "systemd": True, "container_runtimes": ["containerd"]}
    facts["nics"] = [
        {"name": "eno1", "speed_mbps": 25000, "mac": "3c:ec:ef:10:20:30", "state": "UP",
         "addresses": ["10.0.0.21/24"], "rdma": False},
        {"name": "ibp24s0", "speed_mbps": 400000, "mac": "00:00:10:29:fe:80", "state": "UP",
         "addresses": [], "rdma": True}]
    facts["disks"] = [
        {"name": "nvme0n1", "size_gib": 1788.5, "rotational": False,
         "model": "SAMSUNG MZ1L21T9HCLS", "transport": "nvme"},
        {"name": "nvme1n1", "size_gib": 3576.9, "rotational": False,
         "model": "SAMSUNG MZQL23T8HCLS", "transport": "nvme"}]
    facts |= summarize(facts)
    return facts


def seed(data_dir: Path) -> None:
    """Two hosts (one checked, one waiting for its key) and two deployments."""
    now = time.time()
    db = sqlite3.connect(data_dir / STATE_FILE, timeout=30)
    try:
        with db:
            for name, address, facts, labels in (
                    ("gpu-01", "10.0.0.21", h100_facts(), {"rack": "r1", "zone": "lab"}),
                    ("cpu-02", "10.0.0.22", {}, {})):
                db.execute(
                    "INSERT INTO hosts (name, address, port, user, auth, secret, role, labels,"
                    " facts, facts_at, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                    (name, address, 22, "root", "key", b"(sealed)", "gpu" if facts else "agent",
                     json.dumps(labels), json.dumps(facts), now if facts else None, now, now))
            db.execute("INSERT INTO host_keys (host, public_key, fingerprint, accepted_at)"
                       " VALUES ('gpu-01', 'ssh-ed25519 AAAA', ?, ?)", (FINGERPRINT, now))
            db.execute("INSERT INTO host_keys (host, offered_key, offered_fingerprint,"
                       " offered_at) VALUES ('cpu-02', 'ssh-ed25519 BBBB', ?, ?)",
                       (FINGERPRINT.replace("pR8", "Qz1"), now))
            for iid, book in (("ins_seedpreflight", "preflight"), ("ins_seeddetect", "detect")):
                db.execute(
                    "INSERT INTO installs (id, playbook, hosts, dry_run, vars, status, summary,"
                    " error, created_at, finished_at) VALUES (?,?,?,0,'{}','success',?,'',?,?)",
                    (iid, book, '["gpu-01"]', json.dumps({"gpu-01": {
                        "status": "success", "error": "", "counts": {"ok": 11}}}), now - 60,
                     now - 55))
            proposal = {"engine": "vllm", "gpu": "h100-sxm", "gpus": 2, "tensor_parallel": 2,
                        "max_batch": 64, "max_model_len": 1280, "gpu_memory_utilization": 0.9,
                        "predicted": {"ttft_ms": 85.0, "tpot_ms": 11.2,
                                      "total_tokens_per_s": 5120.0,
                                      "memory_gib_per_gpu": 61.3, "meets_slo": True},
                        "notes": ["2 x h100-sxm with TP 2 meets the workload"]}
            for dep_id, status, message in (
                    ("dep_seedserving", "serving", "serving at http://10.0.0.21:8100/v1"),
                    ("dep_seedproposal", "proposed", "")):
                db.execute(
                    "INSERT INTO deployments (id, model, target_kind, target, status, proposal,"
                    " spec, upstream, message, created_at, updated_at)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    (dep_id, "smollm2-135m-instruct", "host", "gpu-01", status,
                     json.dumps(proposal), json.dumps({"route": "smollm2-135m-instruct"}),
                     "engine-gpu-01" if status == "serving" else "", message, now, now))
    finally:
        db.close()
