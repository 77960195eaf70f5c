"""Measured serving runs (the shared LLM-Inference-Bench tables) as typed records.

Column meanings (see the data README): ``Latency`` is the whole static batch's time, input
length = output length = ``Input Output Length``, ``Num of Hardware`` is the TP degree, and
``Throughput`` = 2 · L · B / Latency counts input tokens too (so it is only used as a check).
"""

from __future__ import annotations

import csv
from pathlib import Path

import msgspec

DATA_DIR = Path(__file__).parent / "data"

HARDWARE_IDS = {
    # The study's A100 runs slow down at batch 64 x 2048 the way a 40 GB card does.
    "Nvidia A100 GPU": "a100-40g",
    "Nvidia H100 GPU": "h100-sxm",
    "Nvidia GH200 GPU": "gh200",
    "AMD MI250 GPU": "mi250",
    "AMD MI300X GPU": "mi300x",
    "Habana Gaudi2": "gaudi2",
}
ENGINE_IDS = {
    "vLLM": "vllm",
    "TensorRT-LLM": "trtllm",
    "llama.cpp": "llamacpp",
    "Deepspeed-MII": "deepspeed",
    "Deepspeed": "deepspeed",
}


#: Measured platforms kept out of training (still scored when held out in bench/): their runs
#: disagree with the platform's published capability by more than 2x, so they describe one
#: software build rather than the hardware. See docs/simulator.md, "Data curation".
#: - mi300x: prefill of 16 x 1,024 tokens on a 7B model ran at ~8 % of the 1,307 TFLOPS
#:   peak (H100: ~55 % in the same table) and decode 1.3-5.5x below the roofline, growing
#:   with batch; MLPerf Inference v4.1 (Llama-2-70B, 8 GPUs) puts MI300X level with H100.
NOT_TRAINED = {"mi300x": "study's ROCm build runs 2-5x below roofline (docs/simulator.md)"}


class Measurement(msgspec.Struct, frozen=True):
    """One measured static-batch run."""

    gpu: str
    engine: str
    model: str
    tp: int
    pp: int
    input_tokens: int
    output_tokens: int
    batch: int
    e2e_s: float | None
    ttft_s: float | None
    source: str
    #: The study states none; its runs are taken as 16-bit.
    dtype: str = "bf16"


def _consistent(row: dict[str, str], length: int, batch: int, latency: float) -> bool:
    # llama.cpp rows at batch > 1 report 2·L/Latency: the batch did not run as one static
    # batch the way the README defines it, so those rows are left out.
    throughput = float(row["Throughput"])
    ratio = throughput * latency / (2.0 * length * batch)
    return 0.8 < ratio < 1.25


def _load_all_results(path: Path) -> list[Measurement]:
    out: list[Measurement] = []
    with path.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            gpu = HARDWARE_IDS.get(row["Hardware"].strip())
            engine = ENGINE_IDS.get(row["Framework"].strip())
            if gpu is None or engine is None:
                continue
            length, batch = int(row["Input Output Length"]), int(row["Batch Size"])
            latency = float(row["Latency"])
            if not _consistent(row, length, batch, latency):
                continue
            ptype = row.get("Parallelism Type", "Tensor Parallelism").strip()
            n = int(row["Num of Hardware"])
            tp, pp = (1, n) if ptype.startswith("Pipeline") else (n, 1)
            out.append(
                Measurement(
                    gpu=gpu,
                    engine=engine,
                    model=row["Model"].strip(),
                    tp=tp,
                    pp=pp,
                    input_tokens=length,
                    output_tokens=length,
                    batch=batch,
                    e2e_s=latency,
                    ttft_s=None,
                    source=path.name,
                )
            )
    return out


def _load_ttft(path: Path) -> list[Measurement]:
    out: list[Measurement] = []
    with path.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if not row.get("Hardware") or not row.get("TTFT Latency"):
                continue
            gpu = HARDWARE_IDS.get(row["Hardware"].strip())
            engine = ENGINE_IDS.get(row["Framework"].strip())
            if gpu is None or engine is None:
                continue
            out.append(
                Measurement(
                    gpu=gpu,
                    engine=engine,
                    model=row["Model"].strip(),
                    tp=int(row["Num of Hardware"]),
                    pp=1,
                    input_tokens=int(row["Input Length"]),
                    output_tokens=int(row["Output Length"]),
                    batch=int(row["Batch Size"]),
                    e2e_s=None,
                    ttft_s=float(row["TTFT Latency"]),
                    source=path.name,
                )
            )
    return out


def trainable(rows: list[Measurement]) -> list[Measurement]:
    """The rows the regressor may learn from (``NOT_TRAINED`` platforms left out)."""
    return [m for m in rows if m.gpu not in NOT_TRAINED]


def load_measurements(data_dir: Path = DATA_DIR) -> list[Measurement]:
    """All usable measurements under ``data_dir`` (files named like the shared data set)."""
    rows: list[Measurement] = []
    for path in sorted(data_dir.glob("*.csv")):
        with path.open(encoding="utf-8") as f:
            header = f.readline()
        if "TTFT" in header:
            rows.extend(_load_ttft(path))
        elif "Latency" in header:
            rows.extend(_load_all_results(path))
    return rows
