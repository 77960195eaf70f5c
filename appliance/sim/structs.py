"""Request and result Structs of the simulator (its boundary types)."""

from __future__ import annotations

from typing import Literal

import msgspec

Dtype = Literal["fp32", "fp16", "bf16", "fp8", "int8", "int4"]
Engine = Literal["vllm", "sglang", "trtllm", "llamacpp", "tgi", "deepspeed"]
Method = Literal["heuristic", "regressor"]
ENGINES: tuple[str, ...] = ("vllm", "sglang", "trtllm", "llamacpp", "tgi", "deepspeed")
METHODS: tuple[str, ...] = ("heuristic", "regressor")


class Deployment(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How a model is laid out: one replica spans ``tp · pp`` GPUs."""

    gpu: str
    tp: int = 1
    pp: int = 1
    replicas: int = 1
    dtype: Dtype = "bf16"
    engine: Engine = "vllm"

    @property
    def gpus_per_replica(self) -> int:
        """GPUs one model replica occupies."""
        return self.tp * self.pp

    @property
    def gpus(self) -> int:
        """GPUs in use overall."""
        return self.tp * self.pp * self.replicas


class Workload(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A static batch of ``batch`` identical requests that start together."""

    input_tokens: int
    output_tokens: int
    batch: int = 1


class MemoryBreakdown(msgspec.Struct, frozen=True):
    """Memory one GPU needs, GiB."""

    weights_gib: float
    kv_cache_gib: float
    activations_gib: float
    overhead_gib: float
    total_gib: float
    usable_gib: float
    #: Requests of this workload's length one replica holds at once (0 when weights don't fit).
    max_concurrency: int


class Prediction(msgspec.Struct, frozen=True):
    """Predicted serving metrics of one deployment under one workload."""

    ttft_ms: float
    tpot_ms: float
    e2e_s: float
    output_tokens_per_s: float
    memory_gib_per_gpu: float
    fits: bool
    method: str
    model: str
    deployment: Deployment
    workload: Workload
    memory: MemoryBreakdown
    #: Physical floor: weight bytes read per step / (TP · bandwidth).
    tpot_floor_ms: float
    cost_per_million_tokens: float
    notes: list[str] = msgspec.field(default_factory=list)


class Slo(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Service-level objectives; ``None`` means unconstrained."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2e_s: float | None = None
    tokens_per_s_per_user: float | None = None
    total_tokens_per_s: float | None = None


class Candidate(msgspec.Struct, frozen=True):
    """One configuration the search scored, with its predicted metrics at the asked load."""

    rank: int
    deployment: Deployment
    max_batch: int
    ttft_ms: float
    tpot_ms: float
    e2e_s: float
    tokens_per_s_per_user: float
    total_tokens_per_s: float
    memory_gib_per_gpu: float
    cost_per_hour: float
    cost_per_million_tokens: float
    meets_slo: bool
    violations: list[str] = msgspec.field(default_factory=list)


class Recommendation(msgspec.Struct, frozen=True):
    """A ranked answer to "how should I deploy this model for this load?"."""

    model: str
    feasible: bool
    method: str
    search: str
    candidates: list[Candidate]
    explanation: str
    evaluated: int
    elapsed_ms: float
