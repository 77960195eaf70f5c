"""Fitting the regressor's boosters from measurements (used by build/train_sim.py and bench/)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from appliance.sim.catalog import lookup_model
from appliance.sim.hardware import GpuCatalog
from appliance.sim.heuristic import Latency, latency
from appliance.sim.measurements import Measurement
from appliance.sim.regressor import (
    ARTEFACT_VERSION,
    FEATURES,
    MONOTONE_INCREASING,
    TTFT_FEATURES,
    Corrector,
    CorrectorMeta,
    artefact_paths,
    feature_row,
)
from appliance.sim.structs import Deployment, Workload

E2E_PARAMS: dict[str, float] = {
    "max_depth": 3,
    "eta": 0.05,
    "subsample": 0.8,
    "colsample_bytree": 0.8,
    "min_child_weight": 20,
    "lambda": 5.0,
    "rounds": 80,
}
TTFT_PARAMS: dict[str, float] = {
    "max_depth": 2,
    "eta": 0.1,
    "subsample": 1.0,
    "colsample_bytree": 1.0,
    "min_child_weight": 2,
    "lambda": 2.0,
    "rounds": 30,
}


#: Weight rows so every GPU type counts the same (see ``group_weights``).
BALANCE_GPUS = True
#: A GPU type with n rows has n / (n + this) of a full type's say.
GROUP_WEIGHT_ROWS = 50
#: Backfitting rounds between the shared booster and the per-GPU offsets.
OFFSET_ROUNDS = 2
#: A GPU's offset is its median residual times n / (n + OFFSET_SHRINK).
OFFSET_SHRINK = 5.0


class Sample(msgspec.Struct, frozen=True):
    """A measurement with its heuristic prediction and features."""

    m: Measurement
    lat: Latency
    features: dict[str, float]


def to_samples(rows: Sequence[Measurement], catalog: GpuCatalog) -> list[Sample]:
    """Heuristic latencies and features of each measurement."""
    out = []
    for m in rows:
        shape = lookup_model(m.model)
        gpu = catalog.get(m.gpu)
        dep = Deployment(
            gpu=m.gpu,
            tp=m.tp,
            pp=m.pp,
            dtype=m.dtype,  # type: ignore[arg-type]
            engine=m.engine,  # type: ignore[arg-type]
        )
        work = Workload(m.input_tokens, m.output_tokens, m.batch)
        lat = latency(shape, dep, gpu, work, m.batch)
        out.append(Sample(m=m, lat=lat, features=feature_row(shape, dep, gpu, work, m.batch, lat)))
    return out


def group_weights(samples: Sequence[Sample]) -> list[float]:
    """Weights that give every GPU type about the same total say (mean weight 1).

    Without them the GPU with the most rows (MI300X, 22 %) sets the corrections for all. A
    type with few rows (a site's first measurements) gets a smaller say, n / (n + 50) of a
    full one, so a handful of rows cannot outweigh a thousand.
    """
    counts: dict[str, int] = {}
    for s in samples:
        counts[s.m.gpu] = counts.get(s.m.gpu, 0) + 1
    raw = [1.0 / (counts[s.m.gpu] + GROUP_WEIGHT_ROWS) for s in samples]
    mean = sum(raw) / len(raw)
    return [w / mean for w in raw]


def _train(
    xs: list[list[float]],
    ys: list[float],
    names: Sequence[str],
    params: dict[str, float],
    nthread: int,
    weights: list[float] | None = None,
) -> object:
    import numpy as np
    import xgboost as xgb

    dm = xgb.DMatrix(
        np.array(xs, dtype=np.float32),
        label=np.array(ys),
        weight=np.array(weights) if weights is not None else None,
        feature_names=list(names),
    )
    p: dict[str, object] = {k: v for k, v in params.items() if k != "rounds"}
    p.update({"objective": "reg:absoluteerror", "nthread": nthread, "seed": 7})
    rising = [f for f in MONOTONE_INCREASING if f in names]
    if rising:
        p["monotone_constraints"] = "(" + ",".join("1" if f in rising else "0" for f in names) + ")"
    return xgb.train(p, dm, num_boost_round=int(params["rounds"]))


def _offsets(gpus: Sequence[str], residuals: Sequence[float], shrink: float) -> dict[str, float]:
    """Per-GPU median residual, shrunk towards 0 by n / (n + shrink)."""
    by_gpu: dict[str, list[float]] = {}
    for g, r in zip(gpus, residuals, strict=True):
        by_gpu.setdefault(g, []).append(r)
    return {
        g: statistics.median(rs) * len(rs) / (len(rs) + shrink) for g, rs in sorted(by_gpu.items())
    }


def _fit_with_offsets(
    samples: Sequence[Sample],
    names: Sequence[str],
    target: Sequence[float],
    params: dict[str, float],
    nthread: int,
    weights: list[float] | None,
) -> tuple[Any, dict[str, float]]:
    """Booster on GPU-agnostic features plus one offset per measured GPU type (backfitting).

    The offsets soak up what is particular to one GPU's software stack (e.g. the study's
    MI300X builds) so the shared correction learns only what holds across GPUs. A GPU type
    without measurements gets no offset: the heuristic's documented priors stand for it.
    """
    import numpy as np

    xs = [[s.features[f] for f in names] for s in samples]
    gpus = [s.m.gpu for s in samples]
    offsets = {g: 0.0 for g in gpus}
    model: Any = None
    for _ in range(OFFSET_ROUNDS):
        ys = [t - offsets[g] for t, g in zip(target, gpus, strict=True)]
        model = _train(xs, ys, names, params, nthread, weights)
        shared = model.inplace_predict(np.array(xs, dtype=np.float32), validate_features=False)
        residual = [t - float(p) for t, p in zip(target, shared, strict=True)]
        offsets = _offsets(gpus, residual, OFFSET_SHRINK)
    ys = [t - offsets[g] for t, g in zip(target, gpus, strict=True)]
    model = _train(xs, ys, names, params, nthread, weights)
    return model, offsets


def fit_corrector(samples: Sequence[Sample], *, nthread: int = 2) -> Corrector:
    """Train both boosters on ``samples`` (log of measured / heuristic as the target)."""
    e2e = [s for s in samples if s.m.e2e_s]
    ttft = [s for s in samples if s.m.ttft_s]
    if not e2e or not ttft:
        raise ValueError("need measurements of both end-to-end time and TTFT")
    e2e_model, e2e_offsets = _fit_with_offsets(
        e2e,
        FEATURES,
        [math.log((s.m.e2e_s or 0.0) / s.lat.e2e_s) for s in e2e],
        E2E_PARAMS,
        nthread,
        group_weights(e2e) if BALANCE_GPUS else None,
    )
    ttft_model, ttft_offsets = _fit_with_offsets(
        ttft,
        TTFT_FEATURES,
        [math.log((s.m.ttft_s or 0.0) / s.lat.ttft_s) for s in ttft],
        TTFT_PARAMS,
        nthread,
        None,
    )
    meta = CorrectorMeta(
        version=ARTEFACT_VERSION,
        features=list(FEATURES),
        ttft_features=list(TTFT_FEATURES),
        train_rows=len(e2e),
        ttft_rows=len(ttft),
        params={
            **{f"e2e_{k}": v for k, v in E2E_PARAMS.items()},
            **{f"ttft_{k}": v for k, v in TTFT_PARAMS.items()},
        },
        gpu_offsets=e2e_offsets,
        ttft_gpu_offsets=ttft_offsets,
    )
    return Corrector(e2e_model, ttft_model, meta)


def save_corrector(corr: Corrector, data_dir: Path) -> dict[str, Path]:
    """Write the artefact (two boosters and their metadata) into ``data_dir``."""
    paths = artefact_paths(data_dir, corr.meta.version)
    corr._e2e.save_model(str(paths["e2e"]))
    corr._ttft.save_model(str(paths["ttft"]))
    paths["meta"].write_bytes(msgspec.json.format(msgspec.json.encode(corr.meta)))
    return paths
