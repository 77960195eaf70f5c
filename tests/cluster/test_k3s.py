"""k3s-server, k3s-agent and reset against sshd hosts with a fake k3s binary (k3s itself
cannot run in the namespaces): the files written, the commands run, labels from facts."""

from __future__ import annotations

from pathlib import Path

import yaml

from appliance.cluster import inventory
from appliance.cluster.kube import ClusterService
from appliance.cluster.service import HostService
from appliance.settings import ClusterSettings, load_settings
from appliance.store.state import StateStore
from tests.cluster.test_hosts import REPO_PLAYBOOKS, add, h100_host
from tests.cluster.testhosts import HostFarm

FAKE_K3S = """#!/bin/sh
# stands in for k3s: records how it was started, writes what a server writes, then waits
case "$1" in
  --version) echo "k3s version v1.30.4+k3s1 (fake)" ;;
  server)
    mkdir -p /var/lib/rancher/k3s/server /etc/rancher/k3s
    echo "K10fake::server:0123456789abcdef" > /var/lib/rancher/k3s/server/node-token
    printf 'apiVersion: v1\\nclusters:\\n- cluster:\\n    server: %s\\n  name: default\\n' \\
      https://127.0.0.1:6443 > /etc/rancher/k3s/k3s.yaml
    echo "$@" > /var/lib/rancher/k3s/started-as
    exec sleep 100000 ;;
  agent) echo "$@" > /var/lib/rancher/k3s/started-as; exec sleep 100000 ;;
  kubectl) echo "$(hostname)   Ready   control-plane,master   1m   v1.30.4+k3s1" ;;
  *) exit 1 ;;
esac
"""


async def test_k3s_server_agent_reset(farm: HostFarm, tmp_path: Path,
                                      store: StateStore) -> None:
    bundle = tmp_path / "k3s-bundle"
    bundle.mkdir()
    (bundle / "k3s").write_text(FAKE_K3S)
    (bundle / "k3s").chmod(0o755)
    (bundle / "k3s-airgap-images-amd64.tar.zst").write_bytes(b"\x28\xb5\x2f\xfd" + b"0" * 4096)
    service = HostService(store, tmp_path / "data", ClusterSettings(
        playbooks_dir=str(REPO_PLAYBOOKS)))
    settings = load_settings(overrides={"data_dir": str(tmp_path / "data"),
                                        "listen": "10.250.0.1:8080"}, environ={})
    try:
        srv = farm.create("k3s-srv")
        agt = farm.create("gpu-agent")
        h100_host(agt)
        for h in (srv, agt):
            h.start()
            await add(service, farm, h, role="server" if h is srv else "agent")
        _, det = await service.run_playbook("detect", ["gpu-agent"])
        assert det["gpu-agent"].status == "success"

        _, dry = await service.k3s_install("k3s-server", ["k3s-srv"], settings=settings,
                                           bundle=str(bundle), dry_run=True)
        assert dry["k3s-srv"].status == "success"
        assert srv.exec("test -e /usr/local/bin/k3s").returncode != 0  # nothing changed

        _, res = await service.k3s_install("k3s-server", ["k3s-srv"], settings=settings,
                                           bundle=str(bundle))
        assert res["k3s-srv"].status == "success", res["k3s-srv"].error
        reg = yaml.safe_load(srv.exec("cat /etc/rancher/k3s/registries.yaml").stdout)
        assert reg["mirrors"]["docker.io"]["endpoint"] == ["http://10.250.0.1:8080"]
        assert "10.250.0.1:8080" in reg["mirrors"]
        conf = yaml.safe_load(srv.exec("cat /etc/rancher/k3s/config.yaml").stdout)
        assert conf["node-ip"] == srv.address and "foundry.appliance/role=server" in \
            conf["node-label"]
        assert srv.exec("cat /var/lib/rancher/k3s/started-as").stdout.strip() == "server"
        assert srv.exec("ls /var/lib/rancher/k3s/agent/images").stdout.strip() == \
            "k3s-airgap-images-amd64.tar.zst"
        unit = srv.exec("cat /etc/systemd/system/k3s.service").stdout
        assert "ExecStart=/usr/local/bin/k3s server" in unit and "Type=notify" in unit

        _, res = await service.k3s_install("k3s-agent", ["gpu-agent"], settings=settings,
                                           bundle=str(bundle), server="k3s-srv")
        assert res["gpu-agent"].status == "success", res["gpu-agent"].error
        conf = yaml.safe_load(agt.exec("cat /etc/rancher/k3s/config.yaml").stdout)
        assert conf["server"] == f"https://{srv.address}:6443"
        assert conf["token"] == "K10fake::server:0123456789abcdef"
        labels = dict(x.split("=", 1) for x in conf["node-label"])
        assert labels["foundry.appliance/gpu"] == "h100-sxm"
        assert labels["nvidia.com/gpu.count"] == "8"
        assert labels["feature.node.kubernetes.io/cpu-cpuid.AMXTILE"] == "true"
        assert agt.exec("stat -c %a /etc/rancher/k3s/config.yaml").stdout.strip() == "600"

        # a second run is idempotent: nothing changes
        _, res = await service.k3s_install("k3s-server", ["k3s-srv"], settings=settings,
                                           bundle=str(bundle))
        assert "changed" not in res["k3s-srv"].counts(), res["k3s-srv"].steps

        # the kubeconfig k3s wrote is what a cluster registration reads
        text = (await (await service.session("k3s-srv")).run(
            "cat /etc/rancher/k3s/k3s.yaml")).stdout
        assert "https://127.0.0.1:6443" in text
        assert ClusterService(store, tmp_path / "data")  # add_from_k3s needs a real API

        _, res = await service.k3s_install("reset", ["k3s-srv", "gpu-agent"],
                                           settings=settings, bundle=None)
        assert all(r.status == "success" for r in res.values()), res
        assert srv.exec("test -e /etc/rancher/k3s || test -e /usr/local/bin/k3s").returncode == 1
        _, res = await service.k3s_install("reset", ["k3s-srv"], settings=settings, bundle=None)
        assert "changed" not in res["k3s-srv"].counts()
        assert (await inventory.get_host(store, "gpu-agent")).role == "agent"
    finally:
        await service.close()
