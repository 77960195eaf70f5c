"""Memory model, physical floor and predictions."""

from __future__ import annotations

import pytest

from appliance.sim import (
    Deployment,
    SimInputError,
    Workload,
    default_catalog,
    lookup_model,
    predict,
)
from appliance.sim.heuristic import memory_per_gpu
from appliance.sim.service import default_simulator

GIB = 1 << 30


def test_memory_weights_and_kv() -> None:
    shape = lookup_model("llama-2-7b")
    gpu = default_catalog().get("a100-80g")
    work = Workload(1000, 1000, 4)
    mem = memory_per_gpu(shape, Deployment(gpu="a100-80g"), work, gpu, 4)
    assert mem.weights_gib == pytest.approx(shape.params_total * 2 / GIB)
    # 2 · 32 layers · 32 heads · 128 · 2 bytes = 0.5 MiB per token
    assert mem.kv_cache_gib == pytest.approx(4 * 2000 * 2 * 32 * 32 * 128 * 2 / GIB)
    int4 = memory_per_gpu(shape, Deployment(gpu="a100-80g", dtype="int4"), work, gpu, 4)
    assert int4.weights_gib < mem.weights_gib / 3


def test_kv_replicates_when_kv_heads_below_tp() -> None:
    shape = lookup_model("qwen2-7b")  # 4 KV heads
    gpu = default_catalog().get("h100-sxm")
    work = Workload(1000, 1000, 8)
    tp4 = memory_per_gpu(shape, Deployment(gpu="h100-sxm", tp=4), work, gpu, 8)
    tp8 = memory_per_gpu(shape, Deployment(gpu="h100-sxm", tp=8), work, gpu, 8)
    assert tp8.kv_cache_gib == pytest.approx(tp4.kv_cache_gib)  # one head per GPU either way
    assert tp8.weights_gib < tp4.weights_gib


def test_70b_does_not_fit_one_a100_40g() -> None:
    pred = predict("llama-3-70b", Deployment(gpu="a100-40g"), Workload(512, 128, 1))
    assert not pred.fits
    assert "at least" in pred.notes[0]
    pred4 = predict("llama-3-70b", Deployment(gpu="a100-40g", tp=4), Workload(512, 128, 1))
    assert pred4.fits


@pytest.mark.parametrize("method", ["heuristic", "regressor"])
@pytest.mark.parametrize(
    ("model", "gpu", "tp", "dtype", "batch"),
    [
        ("llama-2-7b", "h100-sxm", 1, "bf16", 1),
        ("llama-3-70b", "h100-sxm", 4, "fp8", 64),
        ("mixtral-8x7b", "mi300x", 2, "bf16", 1),
        ("qwen2-7b", "t4", 1, "int4", 16),
        ("llama-2-70b", "gaudi2", 8, "bf16", 256),
    ],
)
def test_tpot_never_below_physical_floor(
    method: str, model: str, gpu: str, tp: int, dtype: str, batch: int
) -> None:
    dep = Deployment(gpu=gpu, tp=tp, dtype=dtype)  # type: ignore[arg-type]
    pred = predict(model, dep, Workload(512, 256, batch), method=method)
    spec = default_catalog().get(gpu)
    shape = lookup_model(model)
    assert pred.tpot_ms >= pred.tpot_floor_ms - 1e-9
    if shape.num_experts == 1:
        floor = shape.params_total * {"bf16": 2, "fp8": 1, "int4": 0.56}[dtype]
        assert pred.tpot_ms >= floor / (tp * spec.bandwidth_gbs * 1e9) * 1e3 * 0.999


def test_prediction_contract_fields() -> None:
    pred = predict("llama-3-8b", Deployment(gpu="h100-sxm", replicas=2), Workload(512, 128, 8))
    assert pred.method == default_simulator().default_method == "regressor"
    assert pred.e2e_s * 1e3 >= pred.ttft_ms + 127 * pred.tpot_ms * 0.999
    assert pred.output_tokens_per_s == pytest.approx(8 * 128 / pred.e2e_s)


def test_monotone_in_batch_and_gpu_speed() -> None:
    work = Workload(512, 512, 1)
    slow = predict("llama-2-7b", Deployment(gpu="a100-40g"), work, method="heuristic")
    fast = predict("llama-2-7b", Deployment(gpu="h100-sxm"), work, method="heuristic")
    assert fast.e2e_s < slow.e2e_s
    big = predict(
        "llama-2-7b", Deployment(gpu="h100-sxm"), Workload(512, 512, 32), method="heuristic"
    )
    assert big.tpot_ms > fast.tpot_ms
    assert big.output_tokens_per_s > fast.output_tokens_per_s


def test_invalid_inputs() -> None:
    with pytest.raises(SimInputError, match="divide"):
        predict("llama-2-7b", Deployment(gpu="h100-sxm", tp=3), Workload(10, 10))
    with pytest.raises(SimInputError, match="unknown GPU"):
        predict("llama-2-7b", Deployment(gpu="b9000"), Workload(10, 10))
    with pytest.raises(SimInputError):
        predict("llama-2-7b", Deployment(gpu="h100-sxm"), Workload(0, 10))
