"""Configuration search and its explanations."""

from __future__ import annotations

import pytest

from appliance.sim import SimInputError, Slo, recommend


def test_recommend_meets_slo_at_least_cost() -> None:
    rec = recommend(
        "llama-3-70b",
        ["h100-sxm"],
        8,
        input_tokens=1024,
        output_tokens=256,
        concurrency=32,
        slo=Slo(ttft_ms=1000, tpot_ms=60),
        method="heuristic",
    )
    assert rec.feasible
    top = rec.candidates[0]
    assert top.meets_slo and top.ttft_ms <= 1000 and top.tpot_ms <= 60
    assert all(c.cost_per_hour >= top.cost_per_hour for c in rec.candidates if c.meets_slo)
    assert "cheapest" in rec.explanation
    assert [c.rank for c in rec.candidates] == list(range(1, len(rec.candidates) + 1))


def test_infeasible_weights_alone() -> None:
    rec = recommend("llama-3.1-405b", ["l4"], 4, input_tokens=512, output_tokens=128, concurrency=1)
    assert not rec.feasible and not rec.candidates
    assert "needs at least" in rec.explanation and "x l4 for weights alone" in rec.explanation


def test_infeasible_slo_names_best_achievable() -> None:
    rec = recommend(
        "llama-3-70b",
        ["a100-80g"],
        4,
        input_tokens=4096,
        output_tokens=256,
        concurrency=64,
        slo=Slo(ttft_ms=1.0),
        method="heuristic",
    )
    assert not rec.feasible
    assert "best TTFT" in rec.explanation
    assert rec.candidates and not rec.candidates[0].meets_slo


def test_several_gpu_types_and_genetic_search() -> None:
    args = dict(input_tokens=1024, output_tokens=256, concurrency=50, slo=Slo(ttft_ms=2000))
    full = recommend(
        "llama-3-70b", ["h100-sxm", "a100-80g", "l40s"], 16, search="enumerate", **args
    )  # type: ignore[arg-type]
    ga = recommend("llama-3-70b", ["h100-sxm", "a100-80g", "l40s"], 16, search="genetic", **args)  # type: ignore[arg-type]
    assert full.feasible and ga.feasible
    assert {c.deployment.gpu for c in full.candidates} <= {"h100-sxm", "a100-80g", "l40s"}
    # evolution finds a configuration no more than 50 % dearer than exhaustive search
    assert ga.candidates[0].cost_per_hour <= 1.5 * full.candidates[0].cost_per_hour


def test_recommend_rejects_bad_input() -> None:
    with pytest.raises(SimInputError):
        recommend("llama-2-7b", ["h100-sxm"], 0, input_tokens=10, output_tokens=10, concurrency=1)
    with pytest.raises(SimInputError, match="unknown GPU"):
        recommend("llama-2-7b", ["nope"], 1, input_tokens=10, output_tokens=10, concurrency=1)
