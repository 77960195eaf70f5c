"""Heuristic method: a memory model and a roofline for prefill (compute) and decode (memory).

Every term is a published quantity (shape, dtype, GPU peak figures) times an efficiency that
depends on the engine and the GPU vendor's software stack; nothing here is fitted per model.
"""

from __future__ import annotations

import math

import msgspec

from appliance.sim.hardware import WEIGHT_BYTES, GpuSpec
from appliance.sim.shapes import ModelShape
from appliance.sim.structs import Deployment, MemoryBreakdown, Workload

GIB = float(1 << 30)


class EngineProfile(msgspec.Struct, frozen=True):
    """How close an engine gets to the hardware, and what it costs around the math."""

    #: Fraction of memory bandwidth reached by decode steps on one GPU.
    bandwidth_eff: float
    #: Fraction of dense peak reached by prefill matrix multiplies.
    compute_eff: float
    #: Fixed cost of one decode step (scheduling, sampling, kernel launches), ms.
    step_overhead_ms: float
    #: Extra cost per sequence per decode step (sampling, detokenizing, bookkeeping), ms.
    per_seq_overhead_ms: float
    #: CUDA/HIP context, graphs and workspaces, GiB per GPU.
    memory_overhead_gib: float
    #: Fraction of GPU memory the engine lets itself use.
    memory_utilization: float
    #: Largest number of prompt tokens processed in one forward pass.
    prefill_chunk: int
    #: False where multi-GPU means splitting layers (llama.cpp): GPUs then run one after another.
    tensor_parallel: bool = True


ENGINE_PROFILES: dict[str, EngineProfile] = {
    "vllm": EngineProfile(0.70, 0.55, 2.0, 0.02, 2.0, 0.90, 8192),
    "sglang": EngineProfile(0.72, 0.58, 1.5, 0.015, 2.0, 0.88, 8192),
    "trtllm": EngineProfile(0.75, 0.62, 1.0, 0.01, 1.5, 0.92, 8192),
    "tgi": EngineProfile(0.65, 0.50, 2.5, 0.02, 2.0, 0.90, 4096),
    "deepspeed": EngineProfile(0.60, 0.45, 3.0, 0.03, 2.0, 0.90, 4096),
    "llamacpp": EngineProfile(0.60, 0.30, 1.5, 0.05, 0.5, 0.95, 2048, tensor_parallel=False),
}


class VendorFactor(msgspec.Struct, frozen=True):
    """Efficiency of a vendor's software stack relative to CUDA (engine profiles are CUDA's)."""

    bandwidth: float
    compute: float
    #: Multiplier on the engine's per-step and per-sequence host overhead.
    overhead: float = 1.0


#: Priors from published comparisons, not fitted to the training data (docs/simulator.md,
#: "Efficiency priors", gives the source of each):
#: - amd: ROCm builds of the engines reach less of the paper peak than CUDA ones; 0.8 is the
#:   middle of the published range (tuned containers match or beat H100 in memory-bound decode,
#:   untuned GEMMs are several times slower);
#: - intel (Gaudi): graph-compiled HPU stacks; Databricks measured 8 x Gaudi2 matching
#:   8 x H100 in Llama-2-70B decode latency with 2.45 vs 3.35 TB/s, i.e. ~1.3x the bandwidth
#:   utilisation of the CUDA stack; compute stays at the previous 0.9 (no public comparison);
#:   HPU Graphs replay a whole captured step "device bound" with "minimal host overhead"
#:   (Habana inference docs), so host costs per step are a fifth of a CUDA eager engine's.
VENDOR_EFF: dict[str, VendorFactor] = {
    "nvidia": VendorFactor(1.0, 1.0),
    "amd": VendorFactor(0.8, 0.8),
    "intel": VendorFactor(1.3, 0.9, overhead=0.2),
}
#: Vendors not in the table (new accelerators) get a cautious factor.
UNKNOWN_VENDOR = VendorFactor(0.7, 0.7)

#: Fixed latency of one collective (launch + synchronisation), seconds.
COLLECTIVE_LATENCY_S = {"nvlink": 10e-6, "other": 25e-6}


def weight_bytes(shape: ModelShape, dtype: str) -> float:
    """Bytes of all weights in ``dtype``."""
    return shape.params_total * WEIGHT_BYTES[dtype]


def kv_bytes_per_element(dtype: str) -> float:
    """KV-cache element size: fp8 caches with fp8 weights, fp32 with fp32, else 16-bit."""
    return {"fp32": 4.0, "fp8": 1.0}.get(dtype, 2.0)


def layout(dep: Deployment, profile: EngineProfile) -> tuple[int, int]:
    """Effective (tensor, pipeline) degrees: layer-splitting engines turn TP into stages."""
    if profile.tensor_parallel:
        return dep.tp, dep.pp
    return 1, dep.tp * dep.pp


def kv_heads_share(shape: ModelShape, tp: int) -> float:
    """Fraction of KV heads one GPU stores; heads replicate when kv_heads < TP."""
    return max(1.0 / tp, 1.0 / shape.num_kv_heads)


def memory_per_gpu(
    shape: ModelShape, dep: Deployment, work: Workload, gpu: GpuSpec, batch_per_replica: int
) -> MemoryBreakdown:
    """Memory one GPU needs for weights, the batch's KV cache, activations and the engine."""
    profile = ENGINE_PROFILES[dep.engine]
    n_split = dep.tp * dep.pp
    tp_eff, _ = layout(dep, profile)
    weights = weight_bytes(shape, dep.dtype) / n_split
    if dep.tp > 1 and profile.tensor_parallel:
        # embeddings and norms are not always sharded; count the output head once per GPU share
        weights += shape.vocab_size * shape.hidden_size * WEIGHT_BYTES[dep.dtype] / n_split * 0.1
    kv_tok = shape.kv_bytes_per_token(kv_bytes_per_element(dep.dtype)) / dep.pp
    kv_tok *= kv_heads_share(shape, tp_eff) if profile.tensor_parallel else 1.0 / dep.tp
    seq = work.input_tokens + work.output_tokens
    kv = kv_tok * seq * batch_per_replica
    chunk = min(batch_per_replica * work.input_tokens, profile.prefill_chunk)
    act_per_token = (4 * shape.hidden_size + 2 * shape.intermediate_size / tp_eff) * 2.0
    logits = batch_per_replica * shape.vocab_size * 4.0 / tp_eff
    act = chunk * act_per_token + logits
    overhead = profile.memory_overhead_gib * GIB
    usable = gpu.memory_gib * GIB * profile.memory_utilization
    free_for_kv = usable - weights - act - overhead
    max_conc = int(free_for_kv // (kv_tok * seq)) if free_for_kv > 0 and seq > 0 else 0
    total = weights + kv + act + overhead
    return MemoryBreakdown(
        weights_gib=weights / GIB,
        kv_cache_gib=kv / GIB,
        activations_gib=act / GIB,
        overhead_gib=overhead / GIB,
        total_gib=total / GIB,
        usable_gib=usable / GIB,
        max_concurrency=max(0, max_conc),
    )


def _efficiency(dep: Deployment, gpu: GpuSpec) -> tuple[float, float]:
    profile = ENGINE_PROFILES[dep.engine]
    vendor = VENDOR_EFF.get(gpu.vendor, UNKNOWN_VENDOR)
    # no stack reaches more than 90 % of the paper bandwidth in decode
    return min(0.9, profile.bandwidth_eff * vendor.bandwidth), profile.compute_eff * vendor.compute


def _overhead_scale(gpu: GpuSpec) -> float:
    return VENDOR_EFF.get(gpu.vendor, UNKNOWN_VENDOR).overhead


def _allreduce_s(n_bytes: float, tp: int, gpu: GpuSpec) -> float:
    if tp <= 1:
        return 0.0
    alpha = COLLECTIVE_LATENCY_S[
        "nvlink" if gpu.interconnect.startswith(("NV", "Inf")) else "other"
    ]
    per_direction = gpu.interconnect_gbs * 1e9 / 2
    return alpha + 2.0 * (tp - 1) / tp * n_bytes / per_direction


def touched_weight_bytes(shape: ModelShape, dtype: str, tokens: int) -> float:
    """Weight bytes one forward pass over ``tokens`` tokens must read (MoE: experts hit)."""
    total = weight_bytes(shape, dtype)
    if shape.num_experts <= 1:
        return total
    expert = shape.params_expert_total * WEIGHT_BYTES[dtype]
    miss = (1.0 - shape.experts_per_token / shape.num_experts) ** max(1, tokens)
    return total - expert * miss


def tpot_floor_s(shape: ModelShape, dep: Deployment, gpu: GpuSpec, batch: int) -> float:
    """Physical floor of a decode step: weight bytes read / (TP · bandwidth)."""
    tp_eff, _ = layout(dep, ENGINE_PROFILES[dep.engine])
    return touched_weight_bytes(shape, dep.dtype, batch) / (tp_eff * gpu.bandwidth_gbs * 1e9)


def prefill_s(shape: ModelShape, dep: Deployment, gpu: GpuSpec, batch: int, tokens: int) -> float:
    """Time to run the prompts of ``batch`` requests of ``tokens`` tokens (the batch's TTFT)."""
    profile = ENGINE_PROFILES[dep.engine]
    tp, pp = layout(dep, profile)
    bw_eff, flop_eff = _efficiency(dep, gpu)
    n_tok = batch * tokens
    attn_dim = shape.num_heads * shape.head_dim
    flops = (
        2.0 * shape.params_active * n_tok + 2.0 * shape.num_layers * batch * tokens**2 * attn_dim
    )
    compute = flops / (tp * gpu.peak_tflops(dep.dtype) * 1e12 * flop_eff)
    passes = max(1, math.ceil(n_tok / profile.prefill_chunk))
    mem = (
        passes
        * touched_weight_bytes(shape, dep.dtype, n_tok)
        / (tp * gpu.bandwidth_gbs * 1e9 * bw_eff)
    )
    comm = (
        shape.num_layers
        * 2
        * passes
        * _allreduce_s(n_tok / passes * shape.hidden_size * 2.0, tp, gpu)
    )
    hop = (pp - 1) * passes * 30e-6
    overhead = passes * profile.step_overhead_ms * _overhead_scale(gpu) / 1e3
    # Prefill kernels sit near the ridge point for short prompts, where streaming the weights
    # and the math do not hide each other: the two add (a max predicted batch-1 first tokens
    # of the TensorRT-LLM tables ~40 % too fast; long prompts are compute-bound either way).
    return compute + mem + comm + hop + overhead


class StepParts(msgspec.Struct, frozen=True):
    """The terms of one decode step, seconds (the step is max(memory, compute) + the rest)."""

    memory_s: float
    compute_s: float
    comm_s: float
    overhead_s: float
    #: Bytes one GPU reads and FLOPs it runs per step (before efficiencies).
    bytes_per_gpu: float
    flops_per_gpu: float

    @property
    def total_s(self) -> float:
        return max(self.memory_s, self.compute_s) + self.comm_s + self.overhead_s


def decode_parts(
    shape: ModelShape, dep: Deployment, gpu: GpuSpec, batch: int, context: float
) -> StepParts:
    """The terms of one decode step for ``batch`` sequences holding ``context`` tokens each."""
    profile = ENGINE_PROFILES[dep.engine]
    tp, pp = layout(dep, profile)
    bw_eff, flop_eff = _efficiency(dep, gpu)
    # small shards move data less efficiently: each doubling of TP loses ~8 % of bandwidth
    bw_eff *= 0.92 ** math.log2(tp) if tp > 1 else 1.0
    bandwidth = gpu.bandwidth_gbs * 1e9 * bw_eff
    w_bytes = touched_weight_bytes(shape, dep.dtype, batch) / tp
    kv_bytes = (
        batch
        * context
        * shape.kv_bytes_per_token(kv_bytes_per_element(dep.dtype))
        * kv_heads_share(shape, tp)
    )
    attn_dim = shape.num_heads * shape.head_dim
    flops = 2.0 * shape.params_active * batch + 4.0 * shape.num_layers * batch * context * attn_dim
    comm = shape.num_layers * 2 * _allreduce_s(batch * shape.hidden_size * 2.0, tp, gpu)
    hop = (pp - 1) * 30e-6
    return StepParts(
        memory_s=(w_bytes + kv_bytes) / bandwidth,
        compute_s=flops / (tp * gpu.peak_tflops(dep.dtype) * 1e12 * flop_eff),
        comm_s=comm + hop,
        overhead_s=_overhead_scale(gpu)
        * (profile.step_overhead_ms + profile.per_seq_overhead_ms * batch)
        / 1e3,
        bytes_per_gpu=w_bytes + kv_bytes,
        flops_per_gpu=flops / tp,
    )


def decode_step_s(
    shape: ModelShape, dep: Deployment, gpu: GpuSpec, batch: int, context: float
) -> float:
    """Time of one decode step for ``batch`` sequences holding ``context`` tokens each."""
    return decode_parts(shape, dep, gpu, batch, context).total_s


class Latency(msgspec.Struct, frozen=True):
    """Heuristic latencies of a static batch on one replica, seconds."""

    ttft_s: float
    tpot_s: float
    e2e_s: float
    floor_s: float
    #: Rounds the batch runs in when its KV cache does not fit at once (1 when it fits).
    waves: int = 1


def kv_waves(shape: ModelShape, dep: Deployment, gpu: GpuSpec, work: Workload, batch: int) -> int:
    """Rounds a static batch needs when the KV cache of all its requests does not fit.

    Engines admit only the requests whose KV blocks fit and start the rest as others finish,
    so a batch of B with room for C runs in ceil(B / C) rounds. 1 when the weights do not fit
    (there is no run to model) or when everything fits.
    """
    cap = memory_per_gpu(shape, dep, work, gpu, 1).max_concurrency
    if cap <= 0 or batch <= cap:
        return 1
    return math.ceil(batch / cap)


def latency(
    shape: ModelShape, dep: Deployment, gpu: GpuSpec, work: Workload, batch: int
) -> Latency:
    """TTFT, mean TPOT and end-to-end time of ``batch`` requests on one replica.

    When the batch's KV cache does not fit it runs in rounds of equal size: TTFT and TPOT
    are those of one round, the end-to-end time that of all rounds back to back.
    """
    waves = kv_waves(shape, dep, gpu, work, batch)
    per_wave = math.ceil(batch / waves)
    ttft = prefill_s(shape, dep, gpu, per_wave, work.input_tokens)
    floor = tpot_floor_s(shape, dep, gpu, per_wave)
    steps = max(0, work.output_tokens - 1)
    mean_ctx = work.input_tokens + work.output_tokens / 2.0
    tpot = max(decode_step_s(shape, dep, gpu, per_wave, mean_ctx), floor)
    e2e = (ttft + steps * tpot) * waves
    return Latency(ttft_s=ttft, tpot_s=tpot, e2e_s=e2e, floor_s=floor, waves=waves)
