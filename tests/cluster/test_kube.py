"""Kubernetes side against a real kube-apiserver 1.20: register, nodes, deploy, rollout,
scale, delete; manifests also through kubectl."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_asyncio import client

from appliance.cluster.deployments import DeploymentRequest, engine_args, propose_for
from appliance.cluster.kube import (
    ClusterService,
    DeploySpec,
    deployment_manifest,
    list_clusters,
    service_manifest,
)
from appliance.gateway import routing
from appliance.store.state import StateStore
from tests.cluster.kubeapi import KubeApi, kubectl


async def make_nodes(svc: ClusterService, name: str) -> None:
    kubeconfig, _ = await svc._kubeconfig(name)
    async with svc._api(kubeconfig) as api:
        core = client.CoreV1Api(api)
        for node, gpus, labels in (
            ("gpu-a", 8, {"foundry.appliance/gpu": "h100-sxm", "nvidia.com/gpu.present": "true",
                          "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}),
            ("cpu-b", 0, {"feature.node.kubernetes.io/cpu-cpuid.AVX512F": "true"}),
        ):
            with_gpu = {"nvidia.com/gpu": str(gpus)} if gpus else {}
            try:
                await core.create_node({"metadata": {"name": node, "labels": labels}})
            except Exception as exc:
                if getattr(exc, "status", None) != 409:
                    raise
            await core.patch_node_status(node, {"status": {
                "capacity": {"cpu": "64", "memory": "1Ti", **with_gpu},
                "allocatable": {"cpu": "64", "memory": "1Ti", **with_gpu},
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                "message": "hand-made", "lastHeartbeatTime":
                                "2024-01-01T00:00:00Z", "lastTransitionTime":
                                "2024-01-01T00:00:00Z"}]}})


async def finish_rollout(svc: ClusterService, name: str, namespace: str, dep: str) -> None:
    """Nothing schedules Pods here: play the controller and mark the rollout done."""
    kubeconfig, _ = await svc._kubeconfig(name)
    async with svc._api(kubeconfig) as api:
        apps = client.AppsV1Api(api)
        for _ in range(100):
            try:
                d = await apps.read_namespaced_deployment(dep, namespace)
                break
            except Exception:
                await asyncio.sleep(0.1)
        n = d.spec.replicas
        await apps.patch_namespaced_deployment_status(dep, namespace, {"status": {
            "observedGeneration": d.metadata.generation, "replicas": n,
            "updatedReplicas": n, "readyReplicas": n, "availableReplicas": n}})


async def test_cluster_nodes_deploy_scale_delete(kube: KubeApi, store: StateStore,
                                                 tmp_path: Path) -> None:
    svc = ClusterService(store, tmp_path / "data")
    rec = await svc.add_cluster("site", kube.kubeconfig.read_text())
    assert rec.version and rec.server == kube.url
    row = await store.fetchone("SELECT kubeconfig FROM clusters WHERE name='site'")
    assert row["kubeconfig"].startswith("enc1.") and "fa-test-admin-token" not in \
        row["kubeconfig"]
    assert [c.name for c in await list_clusters(store)] == ["site"]

    await make_nodes(svc, "site")
    nodes = {n.name: n for n in await svc.nodes("site")}
    assert nodes["gpu-a"].gpus == 8 and nodes["gpu-a"].gpu_catalog_id == "h100-sxm"
    assert nodes["gpu-a"].ready and nodes["cpu-b"].gpus == 0

    req = DeploymentRequest(model="llama-3-8b", target_kind="cluster", target="site",
                            input_tokens=1024, output_tokens=256, concurrency=16)
    proposal = await asyncio.to_thread(propose_for, "llama-3-8b", "h100-sxm", 8, req)
    assert proposal.engine == "vllm" and proposal.tensor_parallel >= 1
    spec = DeploySpec(name="fa-llama-3-8b", model="llama-3-8b",
                      gpus_per_replica=proposal.tensor_parallel, gpu_catalog_id="h100-sxm",
                      args=engine_args(proposal), rollout_timeout_s=30)
    deploying = asyncio.create_task(svc.deploy("site", spec, registry="10.250.0.1:8080"))
    await asyncio.sleep(0.5)
    assert not deploying.done()  # waits for the rollout
    await finish_rollout(svc, "site", "default", "fa-llama-3-8b")
    upstream = await asyncio.wait_for(deploying, 30)
    assert upstream == "k8s-site-fa-llama-3-8b"
    ups = {u.name: u for u in await routing.list_upstreams(store)}
    assert ups[upstream].base_url == "http://fa-llama-3-8b.default.svc.cluster.local/v1"

    kubeconfig, _ = await svc._kubeconfig("site")
    async with svc._api(kubeconfig) as api:
        d = await client.AppsV1Api(api).read_namespaced_deployment("fa-llama-3-8b", "default")
        c = d.spec.template.spec.containers[0]
        assert c.resources.limits == {"nvidia.com/gpu": str(proposal.tensor_parallel)}
        assert d.spec.template.spec.node_selector == {"foundry.appliance/gpu": "h100-sxm"}
        assert "--tensor-parallel-size" in c.args and "--max-model-len" in c.args
        assert c.readiness_probe.http_get.path == "/health"
        assert c.image == "10.250.0.1:8080/vllm/vllm-openai:v0.6.3"
        s = await client.CoreV1Api(api).read_namespaced_service("fa-llama-3-8b", "default")
        assert s.spec.ports[0].target_port == 8000

    await svc.scale("site", "fa-llama-3-8b", 3)
    async with svc._api(kubeconfig) as api:
        d = await client.AppsV1Api(api).read_namespaced_deployment("fa-llama-3-8b", "default")
        assert d.spec.replicas == 3
    await svc.delete("site", "fa-llama-3-8b")
    async with svc._api(kubeconfig) as api:
        with pytest.raises(Exception) as gone:
            await client.AppsV1Api(api).read_namespaced_deployment("fa-llama-3-8b", "default")
        assert getattr(gone.value, "status", None) == 404


def test_manifests_through_kubectl(kube: KubeApi, tmp_path: Path) -> None:
    spec = DeploySpec(name="fa-smol", model="smollm2-135m-instruct", gpus_per_replica=1,
                      gpu_catalog_id="l4", args=["--max-num-seqs", "8"])
    docs: list[dict[str, Any]] = [deployment_manifest(spec, {"foundry.appliance/gpu": "l4"}),
                                  service_manifest(spec)]
    path = tmp_path / "model.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    # HOME in the temp dir: kubectl keeps its discovery cache under ~/.kube/cache
    env = {"KUBECONFIG": str(kube.kubeconfig), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    out = subprocess.run([kubectl(), "apply", "--dry-run=server", "-f", str(path), "-o", "json"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    applied = json.loads(out.stdout)
    kinds = sorted(i["kind"] for i in applied.get("items", [applied]))
    assert kinds == ["Deployment", "Service"]
    out = subprocess.run([kubectl(), "apply", "-f", str(path)], capture_output=True, text=True,
                         env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    out = subprocess.run([kubectl(), "get", "deployment", "fa-smol", "-o",
                          "jsonpath={.spec.template.spec.containers[0].resources.limits}"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert json.loads(out.stdout) == {"nvidia.com/gpu": "1"}
    subprocess.run([kubectl(), "delete", "-f", str(path)], capture_output=True, env=env,
                   timeout=60)
