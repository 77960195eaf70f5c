"""Kubernetes clusters (kubernetes-asyncio): register, read nodes, deploy models as
Deployment + Service, watch the rollout, scale, delete.

Kubeconfigs are sealed at rest. Only APIs that exist in Kubernetes 1.20 are used
(apps/v1, core/v1); anything newer is optional and a 404 from it is ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import yaml

from appliance.cluster.secrets import CLUSTER_KUBECONFIG, seal, unseal
from appliance.kernel.errors import ApplianceError, BadRequest, Conflict, NotFound
from appliance.store.state import StateStore

GPU_RESOURCES = {"nvidia": "nvidia.com/gpu", "amd": "amd.com/gpu", "intel": "habana.ai/gaudi"}
ENGINE_IMAGES = {"vllm": "docker.io/vllm/vllm-openai:v0.6.3",
                 "appliance": "foundry/appliance:latest"}


class KubeError(ApplianceError):
    status = 502
    code = "kubernetes_error"


class ClusterRecord(msgspec.Struct, kw_only=True):
    name: str
    source: str
    server: str
    namespace: str
    created_at: float
    version: str = ""
    nodes: int = 0


class NodeInfo(msgspec.Struct, kw_only=True):
    name: str
    ready: bool
    labels: dict[str, str]
    gpus: int
    gpu_resource: str | None
    gpu_catalog_id: str | None


class DeploySpec(msgspec.Struct, kw_only=True):
    name: str
    model: str
    replicas: int = 1
    engine: str = "vllm"
    image: str | None = None  # default: from the appliance's registry
    gpus_per_replica: int = 1
    gpu_vendor: str = "nvidia"
    gpu_catalog_id: str | None = None
    args: list[str] = []
    port: int = 8000
    model_path: str = ""  # in the image / volume; default /models/<model>
    rollout_timeout_s: float = 600.0


def _k8s_error(exc: Exception, what: str) -> KubeError:
    status = getattr(exc, "status", None)
    reason = getattr(exc, "reason", "") or str(exc)
    return KubeError(f"{what}: {status or ''} {reason}".strip())


async def list_clusters(store: StateStore) -> list[ClusterRecord]:
    rows = await store.fetchall("SELECT * FROM clusters ORDER BY name")
    return [ClusterRecord(name=r["name"], source=r["source"], server=r["server"],
                          namespace=r["namespace"], created_at=r["created_at"]) for r in rows]


async def remove_cluster(store: StateStore, name: str) -> None:
    if await store.execute("DELETE FROM clusters WHERE name=?", (name,)) == 0:
        raise NotFound(f"no cluster {name!r}", param="name")


def deployment_manifest(spec: DeploySpec, node_selector: dict[str, str],
                        registry: str = "") -> dict[str, Any]:
    """The Deployment of a model: GPU limits, node selector, probes, engine arguments."""
    image = spec.image or (f"{registry}/{ENGINE_IMAGES[spec.engine].split('/', 1)[1]}"
                           if registry else ENGINE_IMAGES[spec.engine])
    labels = {"app.kubernetes.io/name": spec.name, "app.kubernetes.io/managed-by":
              "foundry-appliance", "foundry.appliance/model": _label_value(spec.model)}
    resources: dict[str, Any] = {"requests": {"cpu": "1", "memory": "4Gi"}}
    if spec.gpus_per_replica:
        gpu = GPU_RESOURCES.get(spec.gpu_vendor, "nvidia.com/gpu")
        resources["limits"] = {gpu: str(spec.gpus_per_replica)}
    model_path = spec.model_path or f"/models/{spec.model}"
    args = ["--model", model_path, "--served-model-name", spec.model, "--port",
            str(spec.port), *spec.args]
    probe = {"httpGet": {"path": "/health", "port": spec.port}}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": spec.name, "labels": labels},
        "spec": {
            "replicas": spec.replicas,
            "selector": {"matchLabels": {"app.kubernetes.io/name": spec.name}},
            "strategy": {"type": "RollingUpdate",
                         "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "nodeSelector": node_selector,
                    "containers": [{
                        "name": "engine", "image": image, "args": args,
                        "ports": [{"name": "http", "containerPort": spec.port}],
                        "resources": resources,
                        "readinessProbe": {**probe, "periodSeconds": 5,
                                           "failureThreshold": 3},
                        "livenessProbe": {**probe, "periodSeconds": 20,
                                          "failureThreshold": 6},
                        "startupProbe": {**probe, "periodSeconds": 10,
                                         "failureThreshold": 180},
                        "volumeMounts": [{"name": "shm", "mountPath": "/dev/shm"}],
                    }],
                    "volumes": [{"name": "shm", "emptyDir": {"medium": "Memory"}}],
                },
            },
        },
    }


def service_manifest(spec: DeploySpec) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": spec.name,
                     "labels": {"app.kubernetes.io/managed-by": "foundry-appliance"}},
        "spec": {"selector": {"app.kubernetes.io/name": spec.name},
                 "ports": [{"name": "http", "port": 80, "targetPort": spec.port}],
                 "type": "ClusterIP"},
    }


def _label_value(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text)[:63].strip("-_.")


class ClusterService:
    """Clusters of one state store; a kubernetes-asyncio client per call."""

    def __init__(self, store: StateStore, data_dir: Path) -> None:
        self.store = store
        self.data_dir = data_dir

    async def add_cluster(self, name: str, kubeconfig: str, *, namespace: str = "default",
                          source: str = "kubeconfig") -> ClusterRecord:
        """Check the kubeconfig against the cluster, then store it sealed."""
        if not re.match(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", name):
            raise BadRequest("cluster name must be a DNS label", param="name")
        try:
            doc = yaml.safe_load(kubeconfig)
            server = doc["clusters"][0]["cluster"]["server"]
        except (yaml.YAMLError, KeyError, IndexError, TypeError):
            raise BadRequest("not a kubeconfig (no clusters[0].cluster.server)",
                             param="kubeconfig") from None
        version, nodes = await self._probe(kubeconfig)
        if await self.store.fetchone("SELECT 1 FROM clusters WHERE name=?", (name,)):
            raise Conflict(f"cluster {name!r} exists", param="name")
        sealed = await seal(self.data_dir, kubeconfig, purpose=CLUSTER_KUBECONFIG)
        now = time.time()
        await self.store.execute(
            "INSERT INTO clusters (name, source, kubeconfig, server, namespace, created_at)"
            " VALUES (?,?,?,?,?,?)", (name, source, sealed, server, namespace, now))
        return ClusterRecord(name=name, source=source, server=server, namespace=namespace,
                             created_at=now, version=version, nodes=nodes)

    async def add_from_k3s(self, name: str, hosts: Any, server_host: str, *,
                           namespace: str = "default") -> ClusterRecord:
        """Register the cluster of a k3s server in the inventory (its k3s.yaml over SSH)."""
        from appliance.cluster import inventory

        host = await inventory.get_host(self.store, server_host)
        session = await hosts.session(server_host)
        text = (await session.run("cat /etc/rancher/k3s/k3s.yaml", check=True)).stdout
        text = text.replace("https://127.0.0.1:6443", f"https://{host.address}:6443")
        return await self.add_cluster(name, text, namespace=namespace, source="k3s")

    async def _probe(self, kubeconfig: str) -> tuple[str, int]:
        from kubernetes_asyncio import client

        async with self._api(kubeconfig) as api:
            try:
                version = await client.VersionApi(api).get_code()
                nodes = await client.CoreV1Api(api).list_node()
            except Exception as exc:
                raise _k8s_error(exc, "cluster did not answer") from None
        return str(version.git_version), len(nodes.items)

    @contextlib.asynccontextmanager
    async def _api(self, kubeconfig: str) -> AsyncIterator[Any]:
        from kubernetes_asyncio import client, config

        doc = yaml.safe_load(kubeconfig)
        conf = client.Configuration()
        # the loader writes CA and client certificates to files and caches their paths
        # process-wide by content: keep them in one directory that lives as long as the data dir
        certs = self.data_dir / "run" / "kube-certs"
        await asyncio.to_thread(certs.mkdir, parents=True, exist_ok=True, mode=0o700)
        cache = getattr(config.kube_config, "_temp_files", {})
        for key, path in list(cache.items()):
            if not await asyncio.to_thread(os.path.exists, path):
                del cache[key]
        loader = config.kube_config.KubeConfigLoader(config_dict=doc,
                                                     temp_file_path=str(certs))
        await loader.load_and_set(conf)
        api = client.ApiClient(configuration=conf)
        try:
            yield api
        finally:
            await api.close()

    async def _kubeconfig(self, name: str) -> tuple[str, str]:
        row = await self.store.fetchone("SELECT kubeconfig, namespace FROM clusters WHERE name=?",
                                        (name,))
        if row is None:
            raise NotFound(f"no cluster {name!r}", param="cluster")
        return (await unseal(self.data_dir, row["kubeconfig"], purpose=CLUSTER_KUBECONFIG),
                row["namespace"])

    async def nodes(self, name: str) -> list[NodeInfo]:
        """Nodes with GPU capacity and the labels the appliance cares about."""
        from kubernetes_asyncio import client

        kubeconfig, _ = await self._kubeconfig(name)
        async with self._api(kubeconfig) as api:
            try:
                found = await client.CoreV1Api(api).list_node()
            except Exception as exc:
                raise _k8s_error(exc, "listing nodes") from None
        out = []
        for node in found.items:
            labels = dict(node.metadata.labels or {})
            capacity = dict(node.status.allocatable or node.status.capacity or {}) \
                if node.status else {}
            gpus, resource = 0, None
            for res in GPU_RESOURCES.values():
                if res in capacity:
                    gpus, resource = int(capacity[res]), res
                    break
            ready = any(c.type == "Ready" and c.status == "True"
                        for c in (node.status.conditions or [])) if node.status else False
            out.append(NodeInfo(name=node.metadata.name, ready=ready, labels=labels, gpus=gpus,
                                gpu_resource=resource,
                                gpu_catalog_id=labels.get("foundry.appliance/gpu")))
        return out

    async def deploy(self, name: str, spec: DeploySpec, *, registry: str = "",
                     wait: bool = True) -> str:
        """Create or update the model's Deployment and Service, wait for the rollout, and
        register the Service as a gateway upstream; returns the upstream's name."""
        from kubernetes_asyncio import client

        kubeconfig, namespace = await self._kubeconfig(name)
        selector: dict[str, str] = {}
        if spec.gpu_catalog_id:
            selector["foundry.appliance/gpu"] = spec.gpu_catalog_id
        dep = deployment_manifest(spec, selector, registry)
        svc = service_manifest(spec)
        async with self._api(kubeconfig) as api:
            apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
            try:
                await _apply(apps.read_namespaced_deployment, apps.create_namespaced_deployment,
                             apps.patch_namespaced_deployment, spec.name, namespace, dep)
                await _apply(core.read_namespaced_service, core.create_namespaced_service,
                             core.patch_namespaced_service, spec.name, namespace, svc)
            except ApplianceError:
                raise
            except Exception as exc:
                raise _k8s_error(exc, f"applying {spec.name}") from None
            if wait:
                await self.wait_rollout(api, namespace, spec.name,
                                        timeout_s=spec.rollout_timeout_s)
        from appliance.gateway import routing

        upstream = f"k8s-{name}-{spec.name}"[:63]
        base = f"http://{spec.name}.{namespace}.svc.cluster.local/v1"
        await routing.put_upstream(self.store, routing.UpstreamRecord(name=upstream,
                                                                      base_url=base))
        return upstream

    async def wait_rollout(self, api: Any, namespace: str, name: str, *,
                           timeout_s: float) -> None:
        """Watch the Deployment until its observed generation is rolled out and available."""
        from kubernetes_asyncio import client, watch

        apps = client.AppsV1Api(api)
        deadline = time.monotonic() + timeout_s

        def done(d: Any) -> bool:
            st = d.status
            want = d.spec.replicas or 0
            return bool(st and (st.observed_generation or 0) >= d.metadata.generation
                        and (st.updated_replicas or 0) >= want
                        and (st.available_replicas or 0) >= want)

        current = await apps.read_namespaced_deployment(name, namespace)
        if done(current):
            return
        while time.monotonic() < deadline:
            w = watch.Watch()
            try:
                async with asyncio.timeout(max(1.0, deadline - time.monotonic())):
                    async for event in w.stream(apps.list_namespaced_deployment, namespace,
                                                field_selector=f"metadata.name={name}",
                                                timeout_seconds=30):
                        if done(event["object"]):
                            return
            except TimeoutError:
                break
            finally:
                await w.close()
        raise KubeError(f"deployment {name} not rolled out within {timeout_s:g}s",
                        code="rollout_timeout")

    async def scale(self, name: str, deployment: str, replicas: int) -> None:
        from kubernetes_asyncio import client

        kubeconfig, namespace = await self._kubeconfig(name)
        async with self._api(kubeconfig) as api:
            try:
                await client.AppsV1Api(api).patch_namespaced_deployment_scale(
                    deployment, namespace, {"spec": {"replicas": replicas}})
            except Exception as exc:
                raise _k8s_error(exc, f"scaling {deployment}") from None

    async def delete(self, name: str, deployment: str) -> None:
        from kubernetes_asyncio import client

        kubeconfig, namespace = await self._kubeconfig(name)
        async with self._api(kubeconfig) as api:
            for call in (client.AppsV1Api(api).delete_namespaced_deployment,
                         client.CoreV1Api(api).delete_namespaced_service):
                try:
                    await call(deployment, namespace)
                except Exception as exc:
                    if getattr(exc, "status", None) != 404:
                        raise _k8s_error(exc, f"deleting {deployment}") from None


async def _apply(read: Any, create: Any, patch: Any, name: str, namespace: str,
                 body: dict[str, Any]) -> None:
    try:
        await read(name, namespace)
    except Exception as exc:
        if getattr(exc, "status", None) != 404:
            raise
        await create(namespace, body)
        return
    await patch(name, namespace, body)
