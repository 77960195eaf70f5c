"""An engine host that really serves the starter model, routed through the gateway, with
failover when one host's link goes down."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from appliance.bundle.importer import import_bundle
from appliance.cluster.service import HostService
from appliance.content.store import BlobStore
from appliance.gateway import routing
from appliance.settings import ClusterSettings
from appliance.store.state import StateStore
from tests.cluster.test_hosts import REPO_PLAYBOOKS, add
from tests.cluster.testhosts import HostFarm

MODEL = "smollm2-135m-instruct"
ROUTE = "smol-remote"


async def chat(client: Any) -> tuple[int, dict[str, Any]]:
    resp = await client.post("/v1/chat/completions", json={
        "model": ROUTE, "max_tokens": 8,
        "messages": [{"role": "user", "content": "Say hello."}]})
    text = await resp.text()
    try:
        return resp.status, json.loads(text)
    except ValueError:
        return resp.status, {"text": text}


async def test_engine_hosts_serve_through_gateway_and_fail_over(
        farm: HostFarm, tmp_path: Path, starter_bundle: Path, appliance: Any) -> None:
    data = tmp_path / "data"
    await asyncio.to_thread(import_bundle, data, starter_bundle, allow_unsigned=True)
    store = await StateStore(data).open()
    blobs = BlobStore(data / "blobs")
    service = HostService(store, data, ClusterSettings(
        playbooks_dir=str(REPO_PLAYBOOKS), engine_port=8401, connect_timeout_s=3.0,
        keepalive_s=1.0, engine_first_byte_timeout_s=8.0), blob_path=blobs.path)
    try:
        h1, h2 = farm.start("eng1", "eng2")
        for h in (h1, h2):
            await add(service, farm, h)
        lines: list[str] = []
        results = await asyncio.gather(*(
            service.engine_host(h.name, MODEL, route=ROUTE, threads=1, context_tokens=512,
                                echo=lambda e: lines.append(e.line())) for h in (h1, h2)))
        for res in results:
            assert res.status == "serving", (res.error, lines)
        assert any("[eng1] model files[0]: changed - uploaded" in x for x in lines), lines
        assert any("[eng1] no systemd: warn - systemd is not PID 1" in x for x in lines)
        # the unit file is written even though systemd does not run here
        unit = h1.exec(f"cat /etc/systemd/system/foundry-engine-{MODEL}.service").stdout
        assert f"ExecStart=/opt/foundry-appliance/engine-{MODEL}.sh" in unit
        assert "EnvironmentFile=" in unit
        launch = h1.exec(f"cat /opt/foundry-appliance/engine-{MODEL}.sh").stdout
        assert "engine --name smollm2-135m-instruct --task chat" in launch
        assert "--host 0.0.0.0 --port 8401" in launch
        assert h1.exec(f"stat -c %a /etc/foundry-appliance/engine-{MODEL}.env").stdout == "600\n"

        route = {r.model: r for r in await routing.list_routes(store)}[ROUTE]
        assert sorted(route.targets) == [f"engine-eng1:{MODEL}", f"engine-eng2:{MODEL}"]

        # a re-run changes nothing: uploads verified equal, the engine keeps running
        again = await service.engine_host("eng1", MODEL, route=ROUTE, threads=1,
                                          context_tokens=512)
        assert again.status == "serving"
        from appliance.cluster.runner import get_install

        summary = (await get_install(store, again.install_id)).summary["eng1"]["counts"]
        assert "changed" not in summary, summary

        client = await appliance({"data_dir": str(data), "auth": {"required": False},
                                  "gateway": {"connect_timeout_s": 1.0, "retries": 1}})
        status, body = await chat(client)
        deadline = time.monotonic() + 10
        while status != 200 and time.monotonic() < deadline:  # the server picks up the route
            await asyncio.sleep(0.5)
            status, body = await chat(client)
        assert status == 200, body
        assert body["choices"][0]["message"]["content"]
        for _ in range(3):  # both hosts serve
            status, body = await chat(client)
            assert status == 200, body

        # cut eng1 off: every request is still answered, by eng2
        h1.link_down()
        for _ in range(4):
            status, body = await chat(client)
            assert status == 200, body
        state = await (await client.get("/api/routes")).json()
        assert state  # route table still served
        h1.link_up()

        # both cut off: the gateway answers with an error, not a hang
        h1.link_down()
        h2.link_down()
        started = time.monotonic()
        status, body = await chat(client)
        assert status != 200, body
        # bounded by the engine upstreams' first-byte timeout, not TCP's minutes of retries
        assert time.monotonic() - started < 60
    finally:
        await service.close()
        await store.close()
