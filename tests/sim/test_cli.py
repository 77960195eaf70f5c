"""`appliance sim predict|recommend` through the real argument parser."""

from __future__ import annotations

import json

import pytest

from appliance.cli import main

PREDICT = [
    "sim",
    "predict",
    "--model",
    "llama-3-8b",
    "--gpu",
    "h100-sxm",
    "--gpus",
    "2",
    "--tp",
    "2",
    "--pp",
    "1",
    "--dtype",
    "bf16",
    "--engine",
    "vllm",
    "--input-tokens",
    "512",
    "--output-tokens",
    "128",
    "--batch",
    "8",
]


def test_predict_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*PREDICT, "--method", "heuristic", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in (
        "ttft_ms",
        "tpot_ms",
        "e2e_s",
        "output_tokens_per_s",
        "memory_gib_per_gpu",
        "fits",
        "method",
    ):
        assert key in out
    assert out["method"] == "heuristic" and out["fits"] is True
    assert out["output_tokens_per_s"] == pytest.approx(8 * 128 / out["e2e_s"])


def test_predict_default_method_and_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(PREDICT) == 0
    out = capsys.readouterr().out
    assert "TTFT" in out and "regressor" in out


def test_predict_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*PREDICT[:4], "--gpu", "b9000", *PREDICT[6:]]) == 2
    assert "unknown GPU" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main([*PREDICT, "--dtype", "fp4"])
    assert exc.value.code == 2


def test_recommend_json(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "sim",
            "recommend",
            "--model",
            "llama-3-70b",
            "--gpu",
            "h100-sxm,a100-80g",
            "--gpus",
            "8",
            "--input-tokens",
            "1024",
            "--output-tokens",
            "256",
            "--concurrency",
            "16",
            "--ttft-ms",
            "2000",
            "--json",
        ]
    )
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["feasible"] and out["candidates"][0]["meets_slo"]


def test_recommend_infeasible(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "sim",
            "recommend",
            "--model",
            "llama-3.1-405b",
            "--gpu",
            "t4",
            "--gpus",
            "2",
            "--input-tokens",
            "100",
            "--output-tokens",
            "100",
            "--concurrency",
            "1",
        ]
    )
    assert code == 1
    assert "needs at least" in capsys.readouterr().err
