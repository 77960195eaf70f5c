"""Host inventory, SSH executor and playbooks against real sshd hosts in network namespaces."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from appliance.cluster import inventory
from appliance.cluster.inventory import HostInput
from appliance.cluster.service import HostService
from appliance.cluster.ssh import AuthFailed, HostKeyChanged, HostKeyUnknown, HostUnreachable
from appliance.settings import ClusterSettings
from appliance.store.state import StateStore
from tests.cluster.conftest import FIXTURES
from tests.cluster.testhosts import HostFarm, TestHost, keypair

REPO_PLAYBOOKS = Path(__file__).resolve().parents[2] / "playbooks"

FAKE_NVIDIA_SMI = """#!/bin/sh
case "$*" in
  *--query-gpu*) cat /opt/fixtures/nvidia-smi.csv ;;
  *-q*) cat /opt/fixtures/nvidia-smi-q.txt ;;
  *) echo "NVIDIA-SMI 535.129.03   Driver Version: 535.129.03   CUDA Version: 12.2" ;;
esac
"""


def fake_tool(host: TestHost, tool: str, fixture: str) -> None:
    """Put ``tool`` on the host's PATH (/usr/local/bin) printing a real machine's output."""
    host.put(f"/opt/fixtures/{fixture}", (FIXTURES / fixture).read_text())
    host.put(f"/usr/local/bin/{tool}", f"#!/bin/sh\ncat /opt/fixtures/{fixture}\n", 0o755)


def h100_host(host: TestHost) -> None:
    host.put("/opt/fixtures/nvidia-smi.csv", (FIXTURES / "nvidia-smi-h100-query.csv").read_text())
    host.put("/opt/fixtures/nvidia-smi-q.txt", (FIXTURES / "nvidia-smi-h100-q.txt").read_text())
    host.put("/usr/local/bin/nvidia-smi", FAKE_NVIDIA_SMI, 0o755)
    fake_tool(host, "lspci", "lspci-dgx-h100.txt")
    fake_tool(host, "lscpu", "lscpu-xeon-8480.txt")


@pytest.fixture
async def hosts_service(tmp_path: Path, store: StateStore) -> AsyncIterator[HostService]:
    service = HostService(store, tmp_path / "data", ClusterSettings(
        connect_timeout_s=3.0, command_timeout_s=60.0, keepalive_s=1.0,
        playbooks_dir=str(REPO_PLAYBOOKS)))
    yield service
    await service.close()


async def add(service: HostService, farm: HostFarm, host: TestHost, **extra: object) -> None:
    result = await service.add_host(HostInput(
        name=host.name, address=host.address, user=str(extra.pop("user", "root")),
        private_key=str(extra.pop("private_key", farm.client_key.read_text())),
        **extra), accept_host_key=True)  # type: ignore[arg-type]
    assert result.accepted, result.message


async def test_preflight_and_detect_in_parallel(farm: HostFarm,
                                                hosts_service: HostService) -> None:
    gpu = farm.create("gpu-h100")
    h100_host(gpu)
    amd = farm.create("gpu-mi300x")
    fake_tool(amd, "lspci", "lspci-mi300x.txt")
    gaudi = farm.create("gpu-gaudi2")
    fake_tool(gaudi, "lspci", "lspci-gaudi2.txt")
    plain = farm.create("cpu-only")
    for h in (gpu, amd, gaudi, plain):
        h.start()
        await add(hosts_service, farm, h)
    names = [h.name for h in (gpu, amd, gaudi, plain)]

    lines: list[str] = []
    _, pre = await hosts_service.run_playbook("preflight", names,
                                              echo=lambda e: lines.append(e.line()))
    assert {r.status for r in pre.values()} == {"success"}, {h: r.error for h, r in pre.items()}
    facts = pre["cpu-only"].facts["preflight"]
    assert facts["hostname"] == "cpu-only"
    assert facts["hostname_resolves"] is True
    assert abs(pre["cpu-only"].facts["clock"]["skew_s"]) < 2
    assert facts["memory_mib"] > 0 and facts["cpus"] >= 1
    assert facts["systemd"] is False  # no systemd as PID 1 in the namespaces
    init = next(s for s in pre["cpu-only"].steps if s.step == "init system")
    assert init.status == "warn" and "systemd is not running" in init.message
    assert any(line.startswith("[gpu-h100] memory: ok") for line in lines), lines

    _, det = await hosts_service.run_playbook("detect", names)
    assert {r.status for r in det.values()} == {"success"}, {h: r.error for h, r in det.items()}

    h100 = (await inventory.get_host(hosts_service.store, "gpu-h100")).facts
    assert h100["accelerator"]["catalog_id"] == "h100-sxm"
    assert h100["accelerator"]["count"] == 8
    assert h100["accelerator"]["memory_mib"] == 81559
    assert len(h100["gpus"]) == 8 and h100["gpus"][0]["driver"] == "535.129.03"
    assert h100["gpus"][3]["pci_bus_id"] == "00000000:5d:00.0"
    assert len(h100["pci_accelerators"]) == 8  # the NVSwitch bridges are not accelerators
    assert h100["cpu"]["avx512"] and h100["cpu"]["amx"]
    assert h100["cpu"]["sockets"] == 2 and h100["numa"]["nodes"] == 2
    assert h100["preflight"]["hostname"] == "gpu-h100"  # preflight facts kept
    assert any(n["name"] == "eth0" and f"{gpu.address}/30" in n["addresses"]
               for n in h100["nics"]), h100["nics"]

    mi = (await inventory.get_host(hosts_service.store, "gpu-mi300x")).facts
    assert mi["accelerator"]["catalog_id"] == "mi300x" and mi["accelerator"]["count"] == 8
    assert mi["accelerator"]["vendor"] == "amd"
    ga = (await inventory.get_host(hosts_service.store, "gpu-gaudi2")).facts
    assert ga["accelerator"]["catalog_id"] == "gaudi2" and ga["accelerator"]["vendor"] == "intel"
    cpu = (await inventory.get_host(hosts_service.store, "cpu-only")).facts
    assert cpu["accelerator"] is None and cpu["gpus"] == []

    from appliance.sim import default_catalog

    catalog = default_catalog()
    for f in (h100, mi, ga):
        assert catalog.get(f["accelerator"]["catalog_id"]).vendor == f["accelerator"]["vendor"]


async def test_hostname_check_bounded_when_the_resolver_hangs(
        farm: HostFarm, hosts_service: HostService) -> None:
    # an air-gapped host whose DNS server never answers: the check warns, it does not wait
    # out the resolver (glibc: 5 s x 2 tries per address family)
    h = farm.create("h1")
    h.put("/usr/local/bin/getent", "#!/bin/sh\nexec sleep 60\n", 0o755)
    h.start()
    await add(hosts_service, farm, h)
    _, res = await hosts_service.run_playbook("preflight", ["h1"])
    r = res["h1"]
    assert r.status == "success", r.error
    assert r.facts["preflight"]["hostname_resolves"] is False
    gather = next(s for s in r.steps if s.step == "gather")
    assert gather.duration_s < 30, gather  # `timeout 3`, not the sleep
    check = next(s for s in r.steps if s.step == "hostname resolves")
    assert check.status == "warn" and "does not resolve" in check.message


async def test_unknown_then_changed_host_key_refused(farm: HostFarm, tmp_path: Path,
                                                     hosts_service: HostService) -> None:
    (host,) = farm.start("h1")
    added = await hosts_service.add_host(HostInput(
        name="h1", address=host.address, private_key=farm.client_key.read_text()))
    assert not added.accepted and added.fingerprint and added.fingerprint.startswith("SHA256:")
    assert "accept-key h1" in added.message
    _, res = await hosts_service.run_playbook("preflight", ["h1"])
    assert res["h1"].status == "failed" and res["h1"].error_code == HostKeyUnknown.code
    assert added.fingerprint in res["h1"].error

    await hosts_service.accept_key("h1", added.fingerprint)
    _, res = await hosts_service.run_playbook("preflight", ["h1"])
    assert res["h1"].status == "success"

    # the host is "reinstalled" with a new key: refused loudly, both fingerprints named
    host.stop()
    new_key, _ = keypair(tmp_path, "other_host_key")
    host.put_host_key(new_key)
    host.start()
    await hosts_service.pool.drop("h1")
    _, res = await hosts_service.run_playbook("preflight", ["h1"])
    assert res["h1"].status == "failed" and res["h1"].error_code == "host_key_changed"
    assert "HOST KEY CHANGED" in res["h1"].error and added.fingerprint in res["h1"].error
    stored = await inventory.host_key(hosts_service.store, "h1")
    assert stored.fingerprint == added.fingerprint  # the accepted key is not replaced
    assert stored.offered_fingerprint and stored.offered_fingerprint != added.fingerprint
    with pytest.raises(HostKeyChanged):
        await hosts_service.add_host(HostInput(name="h1", address=host.address,
                                               private_key=farm.client_key.read_text()),
                                     accept_host_key=True, replace=True)


async def test_wrong_password_and_unreachable(farm: HostFarm,
                                              hosts_service: HostService) -> None:
    h = farm.create("h1")
    h.add_user("deploy", "right-password", sudo="password")
    h.start()
    await add(hosts_service, farm, h, user="deploy", private_key="", password="wrong")
    _, res = await hosts_service.run_playbook("preflight", ["h1"])
    assert res["h1"].status == "failed" and res["h1"].error_code == "ssh_auth_failed"
    assert "authentication failed" in res["h1"].error

    # right password: commands run through sudo -S as root
    await hosts_service.add_host(HostInput(name="h1", address=h.address, user="deploy",
                                           password="right-password"), replace=True)
    session = await hosts_service.pool.session(
        await __import__("appliance.cluster.runner", fromlist=["x"]).host_target(
            hosts_service.store, hosts_service.data_dir, "h1"))
    assert (await session.run("id -un")).stdout.strip() == "root"
    assert (await session.run("id -un", sudo=False)).stdout.strip() == "deploy"

    # a host nobody answers for: its /30 exists, nothing listens at that address
    gone = farm.create("gone")
    gone.start()
    await add(hosts_service, farm, gone)
    gone.stop()
    _, res = await hosts_service.run_playbook("preflight", ["gone"])
    assert res["gone"].status == "failed" and res["gone"].error_code == "host_unreachable"
    with pytest.raises(HostUnreachable):
        await hosts_service.pool.scan_key(gone.address, 22)
    assert AuthFailed.code == "ssh_auth_failed"


FLAKY = """
name: flaky
steps:
  - name: first
    run: "mkdir -p /opt/flaky && echo one > /opt/flaky/first"
    creates: /opt/flaky/first
  - name: config
    template: {dest: /opt/flaky/config, content: "value={{ value }}\\n"}
  - name: may fail
    run: "test -e /opt/flaky/fixed"
  - name: last
    run: "touch /opt/flaky/last"
    creates: /opt/flaky/last
"""

SLOW = """
name: slow
steps:
  - name: wait
    run: "sleep 2"
"""


async def test_step_fails_midway_then_rerun_idempotent(farm: HostFarm, tmp_path: Path,
                                                       store: StateStore) -> None:
    books = tmp_path / "books"
    books.mkdir()
    (books / "flaky.yaml").write_text(FLAKY)
    (books / "slow.yaml").write_text(SLOW)
    service = HostService(store, tmp_path / "data", ClusterSettings(playbooks_dir=str(books)))
    try:
        (h,) = farm.start("h1")
        await add(service, farm, h)
        _, res = await service.run_playbook("flaky", ["h1"], variables={"value": 1})
        r = res["h1"]
        assert r.status == "failed" and "may fail" in r.error
        assert [(s.step, s.status) for s in r.steps] == [
            ("first", "changed"), ("config", "changed"), ("may fail", "failed")]

        dry_id, res = await service.run_playbook("flaky", ["h1"], variables={"value": 2},
                                                 dry_run=True)
        assert [(s.step, s.status) for s in res["h1"].steps] == [
            ("first", "ok"), ("config", "would-change"), ("may fail", "would-change"),
            ("last", "would-change")]
        assert h.exec("cat /opt/flaky/config").stdout == "value=1\n"  # dry run changed nothing

        h.exec("touch /opt/flaky/fixed")
        _, res = await service.run_playbook("flaky", ["h1"], variables={"value": 1})
        assert [(s.step, s.status) for s in res["h1"].steps] == [
            ("first", "ok"), ("config", "ok"), ("may fail", "changed"), ("last", "changed")]
        _, res = await service.run_playbook("flaky", ["h1"], variables={"value": 1})
        assert res["h1"].status == "success"
        assert [s.status for s in res["h1"].steps] == ["ok", "ok", "changed", "ok"]

        # two runs at once on one host: the second is refused by the host lock
        first = asyncio.create_task(service.run_playbook("slow", ["h1"]))
        await asyncio.sleep(0.5)
        _, res = await service.run_playbook("slow", ["h1"])
        assert res["h1"].status == "failed" and res["h1"].error_code == "host_busy"
        assert "locked by install" in res["h1"].error
        _, res = await first
        assert res["h1"].status == "success"
        _, res = await service.run_playbook("slow", ["h1"])  # the lock was released
        assert res["h1"].status == "success"

        from appliance.cluster.events import stored_events
        from appliance.cluster.runner import get_install

        rec = await get_install(store, dry_id)
        assert rec.dry_run and rec.status == "success"
        events = await stored_events(store, dry_id)
        assert events[0].status == "started" and events[-1].status == "done"
        assert any(e.step == "config" and e.status == "would-change" for e in events)
    finally:
        await service.close()
