"""The deployment flow: model + target → simulator proposal → confirm → progress → serving.

A target is an inventory host (served by ``engine-host``) or a registered Kubernetes cluster
(a Deployment + Service). The proposal comes from the simulator (``appliance.sim``) when the
target has accelerators it knows: tensor parallelism, max batch, max model length and memory
utilization become the engine's arguments. Confirming starts the work in the background; its
progress streams at ``/api/installs/{install_id}/events``.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from pathlib import Path
from typing import Any, Literal

import msgspec

from appliance.cluster import inventory
from appliance.cluster.runner import new_install_id
from appliance.cluster.service import HostService
from appliance.gateway import routing
from appliance.identity.projects import get_project
from appliance.kernel.errors import BadRequest, Conflict, Forbidden, NotFound
from appliance.settings import Settings

log = logging.getLogger(__name__)


class DeploymentRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    model: str
    target_kind: Literal["host", "cluster"]
    target: str
    route: str | None = None
    input_tokens: int = 1024
    output_tokens: int = 256
    concurrency: int = 8
    gpu: str | None = None  # catalog id; default: detected on the target
    gpus: int | None = None
    project_id: str = "default"  # whose GPU quota the deployment counts against


class Proposal(msgspec.Struct, kw_only=True):
    engine: str  # appliance | vllm
    gpu: str | None
    gpus: int
    tensor_parallel: int = 1
    max_batch: int = 1
    max_model_len: int = 2048
    gpu_memory_utilization: float = 0.9
    predicted: dict[str, Any] = {}
    notes: list[str] = []


class Deployment(msgspec.Struct, kw_only=True):
    id: str
    model: str
    target_kind: str
    target: str
    status: str
    proposal: Proposal
    route: str
    install_id: str = ""
    upstream: str = ""
    message: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0
    project_id: str = "default"

    @property
    def gpus(self) -> int:
        """Accelerators this deployment holds (none when it runs on CPUs)."""
        return self.proposal.gpus if self.proposal.gpu else 0


def engine_args(p: Proposal) -> list[str]:
    """vLLM-style arguments of a proposal."""
    return ["--tensor-parallel-size", str(p.tensor_parallel), "--max-num-seqs",
            str(p.max_batch), "--max-model-len", str(p.max_model_len),
            "--gpu-memory-utilization", f"{p.gpu_memory_utilization:.2f}"]


def propose_for(model: str, gpu: str | None, gpus: int, req: DeploymentRequest,
                data_dir: Path | None = None) -> Proposal:
    """Ask the simulator (``data_dir``'s site calibration, if any) for the best configuration
    on ``gpus`` x ``gpu``."""
    max_len = req.input_tokens + req.output_tokens
    if not gpu or gpus < 1:
        return Proposal(engine="appliance", gpu=None, gpus=0, max_batch=1,
                        max_model_len=max(2048, max_len),
                        notes=["no accelerator on the target: the appliance's llama.cpp engine "
                               "runs on CPU"])
    from appliance.sim import SimInputError, recommend
    from appliance.sim.service import simulator_for

    try:
        rec = recommend(model, [gpu], gpus, input_tokens=req.input_tokens,
                        output_tokens=req.output_tokens, concurrency=req.concurrency, limit=3,
                        sim=simulator_for(data_dir))
    except SimInputError as exc:
        return Proposal(engine="vllm", gpu=gpu, gpus=gpus, tensor_parallel=1,
                        max_batch=req.concurrency, max_model_len=max_len,
                        notes=[f"simulator could not plan this model: {exc}"])
    if not rec.candidates:
        return Proposal(engine="vllm", gpu=gpu, gpus=gpus, max_batch=req.concurrency,
                        max_model_len=max_len, notes=[rec.explanation])
    best = rec.candidates[0]
    return Proposal(
        engine="vllm", gpu=gpu, gpus=best.deployment.tp * best.deployment.pp
        * best.deployment.replicas, tensor_parallel=best.deployment.tp,
        max_batch=best.max_batch, max_model_len=max_len, gpu_memory_utilization=0.9,
        predicted={"ttft_ms": best.ttft_ms, "tpot_ms": best.tpot_ms,
                   "total_tokens_per_s": best.total_tokens_per_s,
                   "memory_gib_per_gpu": best.memory_gib_per_gpu, "meets_slo": best.meets_slo},
        notes=[rec.explanation])


class DeploymentService:
    """Proposals and their execution; background work owned here and cancelled on close."""

    def __init__(self, hosts: HostService, settings: Settings) -> None:
        self.hosts = hosts
        self.store = hosts.store
        self.settings = settings
        self._tasks: dict[str, asyncio.Task[None]] = {}

    async def propose(self, req: DeploymentRequest) -> Deployment:
        from appliance.models.registry import list_models

        if not any(m.name == req.model for m in await list_models(self.store, active_only=True)):
            raise NotFound(f"no active model {req.model!r}", param="model")
        await get_project(self.store, req.project_id)
        if req.target_kind == "host":
            host = await inventory.get_host(self.store, req.target)
            acc = host.facts.get("accelerator") or {}
            gpu, count = req.gpu or acc.get("catalog_id"), req.gpus or acc.get("count") or 0
        else:
            from appliance.cluster.kube import ClusterService

            nodes = await ClusterService(self.store, self.hosts.data_dir).nodes(req.target)
            gpu_nodes = [n for n in nodes if n.gpus > 0]
            gpu = req.gpu or next((n.gpu_catalog_id for n in gpu_nodes if n.gpu_catalog_id),
                                  None)
            count = req.gpus or max((n.gpus for n in gpu_nodes), default=0)
        proposal = await asyncio.to_thread(propose_for, req.model, gpu, count, req,
                                           self.hosts.data_dir)
        dep_id = "dep_" + secrets.token_hex(6)
        now = time.time()
        dep = Deployment(id=dep_id, model=req.model, target_kind=req.target_kind,
                         target=req.target, status="proposed", proposal=proposal,
                         route=req.route or req.model, created_at=now, updated_at=now,
                         project_id=req.project_id)
        await self.store.execute(
            "INSERT INTO deployments (id, model, target_kind, target, status, proposal, spec,"
            " created_at, updated_at, project_id) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (dep.id, dep.model, dep.target_kind, dep.target, dep.status,
             msgspec.json.encode(proposal).decode(),
             msgspec.json.encode({"route": dep.route}).decode(), now, now, dep.project_id))
        return dep

    async def get(self, dep_id: str) -> Deployment:
        row = await self.store.fetchone("SELECT * FROM deployments WHERE id=?", (dep_id,))
        if row is None:
            raise NotFound(f"no deployment {dep_id!r}", param="id")
        return _deployment(row)

    async def list(self) -> list[Deployment]:
        rows = await self.store.fetchall("SELECT * FROM deployments ORDER BY created_at DESC")
        return [_deployment(r) for r in rows]

    async def _update(self, dep: Deployment, **changes: Any) -> Deployment:
        dep = msgspec.structs.replace(dep, updated_at=time.time(), **changes)
        await self.store.execute(
            "UPDATE deployments SET status=?, spec=?, upstream=?, message=?, updated_at=?"
            " WHERE id=?",
            (dep.status, msgspec.json.encode({"route": dep.route,
                                               "install_id": dep.install_id}).decode(),
             dep.upstream, dep.message, dep.updated_at, dep.id))
        return dep

    async def confirm(self, dep_id: str) -> Deployment:
        """Start deploying a proposal; returns at once with the install id to follow."""
        dep = await self.get(dep_id)
        if dep.status not in ("proposed", "failed"):
            raise Conflict(f"deployment {dep_id} is {dep.status}", param="id")
        await self._check_gpu_quota(dep)
        dep = await self._update(dep, status="deploying", install_id=new_install_id(),
                                 message="")
        self._tasks[dep.id] = asyncio.get_running_loop().create_task(
            self._run(dep), name=f"deployment-{dep.id}")
        return dep

    async def _check_gpu_quota(self, dep: Deployment) -> None:
        """Refuse a deployment that would take its project past its GPU limit."""
        project = await get_project(self.store, dep.project_id)
        if project.gpu_limit is None or not dep.gpus:
            return
        held = sum(d.gpus for d in await self.list()
                   if d.project_id == dep.project_id and d.id != dep.id
                   and d.status in ("deploying", "serving"))
        if held + dep.gpus > project.gpu_limit:
            raise Forbidden(
                f"project {project.id} may hold {project.gpu_limit} GPUs; its deployments hold "
                f"{held} and this one needs {dep.gpus}", param="project_id",
                code="gpu_quota_exceeded")

    async def _run(self, dep: Deployment) -> None:
        try:
            if dep.target_kind == "host":
                res = await self.hosts.engine_host(dep.target, dep.model, route=dep.route,
                                                   install_id=dep.install_id)
                if res.status == "serving":
                    await self._update(dep, status="serving", upstream=res.upstream,
                                       message=f"serving at {res.base_url}")
                else:
                    await self._update(dep, status="failed", message=res.error)
            else:
                from appliance.cluster.kube import ClusterService, DeploySpec

                clusters = ClusterService(self.store, self.hosts.data_dir)
                spec = DeploySpec(name=_k8s_name(dep.model), model=dep.model,
                                  gpus_per_replica=max(1, dep.proposal.tensor_parallel)
                                  if dep.proposal.gpu else 0,
                                  gpu_catalog_id=dep.proposal.gpu,
                                  args=engine_args(dep.proposal) if dep.proposal.gpu else [])
                upstream = await clusters.deploy(dep.target, spec)
                await self.hosts.add_route_target(dep.route, f"{upstream}:{dep.model}")
                await self._update(dep, status="serving", upstream=upstream,
                                   message="Deployment rolled out; Service routed")
        except asyncio.CancelledError:
            await asyncio.shield(self._update(dep, status="failed", message="cancelled"))
            raise
        except Exception as exc:
            log.exception("deployment %s failed", dep.id)
            await self._update(dep, status="failed", message=str(exc))
        finally:
            self._tasks.pop(dep.id, None)

    async def wait(self, dep_id: str) -> Deployment:
        task = self._tasks.get(dep_id)
        if task is not None:
            await asyncio.shield(task)
        return await self.get(dep_id)

    async def delete(self, dep_id: str) -> Deployment:
        """Take the deployment's target out of its route and mark it deleted."""
        dep = await self.get(dep_id)
        if dep.upstream:
            for route in await routing.list_routes(self.store):
                if route.model != dep.route:
                    continue
                targets = [t for t in route.targets if t.split(":", 1)[0] != dep.upstream]
                if targets or route.fallback:
                    await routing.put_route(self.store, msgspec.structs.replace(
                        route, targets=targets, weights=[]))
                else:
                    await routing.remove_route(self.store, route.model)
        if dep.target_kind == "cluster" and dep.status == "serving":
            from appliance.cluster.kube import ClusterService

            await ClusterService(self.store, self.hosts.data_dir).delete(
                dep.target, _k8s_name(dep.model))
        return await self._update(dep, status="deleted")

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _k8s_name(model: str) -> str:
    import re

    name = re.sub(r"[^a-z0-9-]+", "-", model.lower()).strip("-")[:50]
    if not name:
        raise BadRequest(f"model name {model!r} gives no Kubernetes name")
    return f"fa-{name}"


def _deployment(row: Any) -> Deployment:
    spec = msgspec.json.decode(row["spec"])
    return Deployment(id=row["id"], model=row["model"], target_kind=row["target_kind"],
                      target=row["target"], status=row["status"],
                      proposal=msgspec.json.decode(row["proposal"], type=Proposal),
                      route=spec.get("route", row["model"]),
                      install_id=spec.get("install_id", ""), upstream=row["upstream"],
                      message=row["message"], created_at=row["created_at"],
                      updated_at=row["updated_at"], project_id=row["project_id"])
