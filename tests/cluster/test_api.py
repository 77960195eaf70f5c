"""/api/hosts, /api/installs (with SSE progress) and /api/deployments on the real app."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from appliance.app import SERVICES
from appliance.bundle.importer import import_bundle
from tests.cluster.test_hosts import h100_host
from tests.cluster.testhosts import HostFarm


async def test_hosts_installs_deployments_api(farm: HostFarm, tmp_path: Path, appliance: Any,
                                              starter_bundle: Path) -> None:
    await asyncio.to_thread(import_bundle, tmp_path / "data", starter_bundle,
                            allow_unsigned=True)
    gpu = farm.create("gpu1")
    h100_host(gpu)
    gpu.start()
    client = await appliance({"auth": {"required": False}})

    resp = await client.post("/api/hosts", json={
        "name": "gpu1", "address": gpu.address, "user": "root",
        "private_key": farm.client_key.read_text(), "accept_host_key": True,
        "labels": {"rack": "r1"}})
    assert resp.status == 201, await resp.text()
    added = await resp.json()
    assert added["accepted"] and added["fingerprint"].startswith("SHA256:")
    resp = await client.post("/api/hosts", json={"name": "bad", "address": "x y",
                                                 "private_key": "k"})
    assert resp.status == 400 and (await resp.json())["error"]["param"] == "address"

    resp = await client.post("/api/installs", json={"playbook": "detect", "hosts": ["gpu1"]})
    assert resp.status == 202, await resp.text()
    install_id = (await resp.json())["id"]
    resp = await client.get(f"/api/installs/{install_id}/events")
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    raw = (await resp.read()).decode()
    events = [json.loads(line[5:]) for line in raw.splitlines() if line.startswith("data:")]
    assert events[0]["status"] == "started" and "event: end" in raw
    assert any(e["host"] == "gpu1" and e["step"] == "nvidia-smi" and e["status"] == "ok"
               for e in events)
    assert events[-2]["status"] == "done" and events[-2]["message"].startswith("success")
    # a finished install replays from the store too
    again = (await (await client.get(f"/api/installs/{install_id}/events")).read()).decode()
    assert again.count("data:") == raw.count("data:")
    rec = await (await client.get(f"/api/installs/{install_id}")).json()
    assert rec["status"] == "success" and rec["summary"]["gpu1"]["status"] == "success"

    host = await (await client.get("/api/hosts/gpu1")).json()
    assert host["facts"]["accelerator"]["catalog_id"] == "h100-sxm"
    assert "secret" not in host and "private_key" not in json.dumps(host)

    resp = await client.post("/api/deployments", json={
        "model": "smollm2-135m-instruct", "target_kind": "host", "target": "gpu1",
        "concurrency": 16})
    assert resp.status == 201, await resp.text()
    dep = await resp.json()
    assert dep["status"] == "proposed" and dep["proposal"]["gpu"] == "h100-sxm"
    assert dep["proposal"]["engine"] == "vllm" and dep["proposal"]["gpus"] >= 1
    listed = await (await client.get("/api/deployments")).json()
    assert [d["id"] for d in listed] == [dep["id"]]

    # a project's GPU quota bounds what its deployments may hold
    resp = await client.post("/api/projects", json={"id": "team", "name": "Team",
                                                    "gpu_limit": dep["proposal"]["gpus"]})
    assert resp.status == 201, await resp.text()
    for _ in range(2):
        resp = await client.post("/api/deployments", json={
            "model": "smollm2-135m-instruct", "target_kind": "host", "target": "gpu1",
            "concurrency": 16, "project_id": "team"})
        assert resp.status == 201, await resp.text()
    first, second = [(await (await client.get("/api/deployments")).json())[i] for i in (1, 0)]
    store = client.server.app[SERVICES].store
    await store.execute("UPDATE deployments SET status='serving' WHERE id=?", (first["id"],))
    resp = await client.post(f"/api/deployments/{second['id']}/confirm")
    assert resp.status == 403, await resp.text()
    assert (await resp.json())["error"]["code"] == "gpu_quota_exceeded"
    await store.execute("DELETE FROM deployments WHERE project_id='team'")

    books = {b["name"] for b in await (await client.get("/api/playbooks")).json()}
    assert {"preflight", "detect", "engine-host", "k3s-server", "k3s-agent", "reset"} <= books
    spec = await (await client.get("/api/openapi.json")).json()
    assert "/api/installs/{id}/events" in spec["paths"]
    assert (await client.delete("/api/hosts/gpu1")).status == 200
    assert (await client.get("/api/hosts/gpu1")).status == 404
