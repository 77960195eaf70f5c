"""Fitting the regressor's boosters from measurements (used by build/train_sim.py and bench/)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import msgspec

from appliance.sim.catalog import lookup_model
from appliance.sim.hardware import GpuCatalog
from appliance.sim.heuristic import Latency, latency
from appliance.sim.measurements import Measurement
from appliance.sim.regressor import (
    ARTEFACT_VERSION,
    FEATURES,
    TTFT_FEATURES,
    Corrector,
    CorrectorMeta,
    artefact_paths,
    feature_row,
)
from appliance.sim.structs import Deployment, Workload

E2E_PARAMS: dict[str, float] = {
    "max_depth": 4,
    "eta": 0.05,
    "subsample": 0.8,
    "colsample_bytree": 0.8,
    "min_child_weight": 5,
    "lambda": 2.0,
    "rounds": 250,
}
TTFT_PARAMS: dict[str, float] = {
    "max_depth": 2,
    "eta": 0.1,
    "subsample": 1.0,
    "colsample_bytree": 1.0,
    "min_child_weight": 2,
    "lambda": 2.0,
    "rounds": 60,
}


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
        dep = Deployment(gpu=m.gpu, tp=m.tp, pp=m.pp, engine=m.engine)  # type: ignore[arg-type]
        work = Workload(m.input_tokens, m.output_tokens, m.batch)
        lat = latency(shape, dep, gpu, work, m.batch)
        out.append(Sample(m=m, lat=lat, features=feature_row(shape, dep, gpu, work, m.batch, lat)))
    return out


def _train(
    xs: list[list[float]],
    ys: list[float],
    names: Sequence[str],
    params: dict[str, float],
    nthread: int,
) -> object:
    import numpy as np
    import xgboost as xgb

    dm = xgb.DMatrix(np.array(xs, dtype=np.float32), label=np.array(ys), feature_names=list(names))
    p: dict[str, object] = {k: v for k, v in params.items() if k != "rounds"}
    p.update({"objective": "reg:absoluteerror", "nthread": nthread, "seed": 7})
    return xgb.train(p, dm, num_boost_round=int(params["rounds"]))


def fit_corrector(samples: Sequence[Sample], *, nthread: int = 2) -> Corrector:
    """Train both boosters on ``samples`` (log of measured / heuristic as the target)."""
    e2e = [s for s in samples if s.m.e2e_s]
    ttft = [s for s in samples if s.m.ttft_s]
    if not e2e or not ttft:
        raise ValueError("need measurements of both end-to-end time and TTFT")
    e2e_model = _train(
        [[s.features[f] for f in FEATURES] for s in e2e],
        [math.log((s.m.e2e_s or 0.0) / s.lat.e2e_s) for s in e2e],
        FEATURES,
        E2E_PARAMS,
        nthread,
    )
    ttft_model = _train(
        [[s.features[f] for f in TTFT_FEATURES] for s in ttft],
        [math.log((s.m.ttft_s or 0.0) / s.lat.ttft_s) for s in ttft],
        TTFT_FEATURES,
        TTFT_PARAMS,
        nthread,
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
    )
    return Corrector(e2e_model, ttft_model, meta)


def save_corrector(corr: Corrector, data_dir: Path) -> dict[str, Path]:
    """Write the artefact (two boosters and their metadata) into ``data_dir``."""
    paths = artefact_paths(data_dir, corr.meta.version)
    corr._e2e.save_model(str(paths["e2e"]))
    corr._ttft.save_model(str(paths["ttft"]))
    paths["meta"].write_bytes(msgspec.json.format(msgspec.json.encode(corr.meta)))
    return paths
