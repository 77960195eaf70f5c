"""Regressor method: XGBoost learns log(measured / heuristic) from shape, layout and load.

The shared correction's features are GPU-agnostic quantities (the heuristic's times and
prefill share, batch, lengths, TP/PP, active parameters, KV/weight bytes, engine family)
rather than GPU or model names, so a GPU or model the training data never saw still gets a
sensible correction; what belongs to one measured GPU type is a per-GPU offset. Two boosters
ship as a versioned artefact in ``data/``: one for the batch's end-to-end time and one for
its time to first token (a site may replace it with its own: ``calibration``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from appliance.sim.hardware import GpuSpec
from appliance.sim.heuristic import Latency, touched_weight_bytes
from appliance.sim.shapes import ModelShape
from appliance.sim.structs import Deployment, Workload

ARTEFACT_VERSION = "v3"
DATA_DIR = Path(__file__).parent / "data"
#: Corrections are clamped to a factor of e^±2 so a bad extrapolation cannot run away.
MAX_LOG_CORRECTION = 2.0

#: GPU-agnostic features only: no vendor, bandwidth or peak figures, so the shared correction
#: cannot memorise one GPU's software stack (per-GPU offsets in the metadata take that part).
FEATURES = (
    "log_heur_e2e",
    "log_heur_ttft",
    "log_heur_tpot",
    "prefill_share",
    "log_batch",
    "log_input",
    "log_output",
    "tp",
    "pp",
    "log_params_active",
    "is_moe",
    "kv_to_weight_bytes",
    "engine_vllm",
    "engine_trtllm",
    "engine_llamacpp",
    "engine_deepspeed",
)
#: The correction may only grow with batch (per-sequence costs the roofline leaves out).
MONOTONE_INCREASING = ("log_batch",)
#: TTFT has few measurements (27 rows, one shape of batch): no absolute times either, so a
#: slow GPU's long prefill is not read as "like the slowest GPU measured".
TTFT_FEATURES = (
    "log_batch",
    "log_input",
    "tp",
    "log_params_active",
    "engine_vllm",
    "engine_trtllm",
    "engine_llamacpp",
    "engine_deepspeed",
)
#: Largest batch measured on more than one GPU type (only MI300X ran 128 and 256): beyond it
#: the shared correction would carry one GPU's behaviour to all, so the feature stops there.
BATCH_FEATURE_CAP = 64
# Engines without measurements borrow the closest measured engine's behaviour.
_ENGINE_FAMILY = {"sglang": "vllm", "tgi": "vllm"}


class CorrectorMeta(msgspec.Struct, frozen=True):
    """What the artefact was trained on."""

    version: str
    features: list[str]
    ttft_features: list[str]
    train_rows: int
    ttft_rows: int
    params: dict[str, float]
    #: log(measured / corrected) particular to each measured GPU type (0 for others).
    gpu_offsets: dict[str, float] = msgspec.field(default_factory=dict)
    ttft_gpu_offsets: dict[str, float] = msgspec.field(default_factory=dict)


def feature_row(
    shape: ModelShape, dep: Deployment, gpu: GpuSpec, work: Workload, batch: int, lat: Latency
) -> dict[str, float]:
    """Named features of one replica running ``batch`` requests."""
    engine = _ENGINE_FAMILY.get(dep.engine, dep.engine)
    per_wave = math.ceil(batch / max(1, lat.waves))
    w_bytes = touched_weight_bytes(shape, dep.dtype, per_wave)
    ctx = work.input_tokens + work.output_tokens / 2.0
    kv_bytes = per_wave * ctx * shape.kv_bytes_per_token(2.0)
    return {
        "log_heur_e2e": math.log(lat.e2e_s),
        "log_heur_ttft": math.log(lat.ttft_s),
        "log_heur_tpot": math.log(lat.tpot_s),
        "prefill_share": lat.ttft_s * lat.waves / lat.e2e_s,
        "log_batch": math.log(min(batch, BATCH_FEATURE_CAP)),
        "log_input": math.log(work.input_tokens),
        "log_output": math.log(work.output_tokens),
        "tp": float(dep.tp),
        "pp": float(dep.pp),
        "log_params_active": math.log(shape.params_active),
        "is_moe": float(shape.num_experts > 1),
        "kv_to_weight_bytes": kv_bytes / w_bytes,
        "engine_vllm": float(engine == "vllm"),
        "engine_trtllm": float(engine == "trtllm"),
        "engine_llamacpp": float(engine == "llamacpp"),
        "engine_deepspeed": float(engine == "deepspeed"),
    }


class Corrector:
    """Two XGBoost boosters applied to heuristic latencies."""

    def __init__(self, e2e_model: Any, ttft_model: Any, meta: CorrectorMeta) -> None:
        self._e2e = e2e_model
        self._ttft = ttft_model
        self.meta = meta

    def with_meta(self, meta: CorrectorMeta) -> Corrector:
        """The same boosters described by ``meta``."""
        return Corrector(self._e2e, self._ttft, meta)

    def dump(self) -> tuple[str, str]:
        """Both boosters as XGBoost JSON (e2e, TTFT)."""
        return (bytes(self._e2e.save_raw("json")).decode(),
                bytes(self._ttft.save_raw("json")).decode())

    @classmethod
    def from_dump(cls, e2e: str, ttft: str, meta: CorrectorMeta) -> Corrector:
        """Boosters from ``dump``'s JSON (raises ImportError without xgboost)."""
        import xgboost as xgb

        boosters = []
        for raw in (e2e, ttft):
            booster = xgb.Booster(params={"nthread": 1})
            booster.load_model(bytearray(raw.encode()))
            boosters.append(booster)
        return cls(boosters[0], boosters[1], meta)

    def log_factors(
        self, rows: list[dict[str, float]], gpus: Sequence[str] | None = None
    ) -> list[tuple[float, float]]:
        """(log TTFT factor, log e2e factor) per feature row, clamped.

        ``gpus`` names each row's GPU type so a measured type gets its own offset; without it
        (or for a type never measured) only the shared correction applies.
        """
        import numpy as np

        if not rows:
            return []
        if gpus is None:
            gpus = [""] * len(rows)
        off_e2e = self.meta.gpu_offsets
        off_ttft = self.meta.ttft_gpu_offsets
        full = np.array([[r[f] for f in self.meta.features] for r in rows], dtype=np.float32)
        ttft = np.array([[r[f] for f in self.meta.ttft_features] for r in rows], dtype=np.float32)
        # inplace_predict skips building a DMatrix: ~10x faster for a handful of rows
        e2e_pred = self._e2e.inplace_predict(full, validate_features=False)
        ttft_pred = self._ttft.inplace_predict(ttft, validate_features=False)
        lim = MAX_LOG_CORRECTION
        return [
            (
                max(-lim, min(lim, float(t) + off_ttft.get(g, 0.0))),
                max(-lim, min(lim, float(e) + off_e2e.get(g, 0.0))),
            )
            for t, e, g in zip(ttft_pred, e2e_pred, gpus, strict=True)
        ]


def artefact_paths(data_dir: Path = DATA_DIR, version: str = ARTEFACT_VERSION) -> dict[str, Path]:
    """Where the artefact's three files live."""
    stem = data_dir / f"corrector-{version}"
    return {
        "e2e": stem.with_name(stem.name + ".e2e.json"),
        "ttft": stem.with_name(stem.name + ".ttft.json"),
        "meta": stem.with_name(stem.name + ".meta.json"),
    }


def load_corrector(data_dir: Path = DATA_DIR, version: str = ARTEFACT_VERSION) -> Corrector | None:
    """Load the shipped artefact; ``None`` when it or xgboost is missing."""
    paths = artefact_paths(data_dir, version)
    if not all(p.is_file() for p in paths.values()):
        return None
    try:
        import xgboost as xgb
    except ImportError:
        return None
    meta = msgspec.json.decode(paths["meta"].read_bytes(), type=CorrectorMeta)
    e2e = xgb.Booster(params={"nthread": 1})
    e2e.load_model(str(paths["e2e"]))
    ttft = xgb.Booster(params={"nthread": 1})
    ttft.load_model(str(paths["ttft"]))
    return Corrector(e2e, ttft, meta)


def apply_correction(lat: Latency, work: Workload, log_ttft: float, log_e2e: float) -> Latency:
    """Corrected latencies: TTFT and e2e scaled, decode time split off, TPOT kept above floor.

    With several KV rounds (``lat.waves``) the e2e time is that many rounds of TTFT + decode.
    """
    waves = max(1, lat.waves)
    ttft = lat.ttft_s * math.exp(log_ttft)
    e2e = lat.e2e_s * math.exp(log_e2e)
    steps = work.output_tokens - 1
    if steps <= 0:
        return Latency(
            ttft_s=ttft,
            tpot_s=max(lat.tpot_s * math.exp(log_e2e), lat.floor_s),
            e2e_s=ttft * waves,
            floor_s=lat.floor_s,
            waves=waves,
        )
    # the decode part of one corrected round; when TTFT's correction eats it, fall back to the
    # heuristic decode time scaled by the e2e factor
    heur_decode = (lat.e2e_s / waves - lat.ttft_s) * math.exp(log_e2e)
    decode = e2e / waves - ttft
    if decode <= 0.2 * heur_decode:
        decode = heur_decode
    tpot = max(decode / steps, lat.floor_s)
    return Latency(
        ttft_s=ttft,
        tpot_s=tpot,
        e2e_s=(ttft + steps * tpot) * waves,
        floor_s=lat.floor_s,
        waves=waves,
    )
