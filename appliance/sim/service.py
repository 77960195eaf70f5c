"""Public entry points of the simulator: ``predict`` and ``recommend``."""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from appliance.sim.errors import SimInputError
from appliance.sim.hardware import DTYPES, GpuCatalog, GpuSpec, default_catalog
from appliance.sim.heuristic import ENGINE_PROFILES, Latency, latency, memory_per_gpu
from appliance.sim.regressor import Corrector, apply_correction, feature_row, load_corrector
from appliance.sim.shapes import ModelShape, resolve_model
from appliance.sim.structs import (
    ENGINES,
    METHODS,
    Deployment,
    Prediction,
    Recommendation,
    Slo,
    Workload,
)

if TYPE_CHECKING:
    from appliance.sim.calibration import Calibration

MAX_TOKENS = 1 << 20


class Simulator:
    """The catalog and the trained corrector, loaded once and shared read-only."""

    def __init__(
        self,
        catalog: GpuCatalog | None = None,
        corrector: Corrector | None = None,
        calibration: Calibration | None = None,
    ):
        self.catalog = catalog or default_catalog()
        self.corrector = corrector
        #: Set when ``corrector`` is a site calibration (appliance.sim.calibration).
        self.calibration = calibration

    @property
    def default_method(self) -> str:
        """The most accurate method available: the regressor when its artefact loaded."""
        return "regressor" if self.corrector is not None else "heuristic"

    def resolve_method(self, method: str | None) -> str:
        """Check ``method`` and fill in the default."""
        if method is None:
            return self.default_method
        if method not in METHODS:
            raise SimInputError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
        if method == "regressor" and self.corrector is None:
            raise SimInputError("the regressor artefact is not available", code="no_regressor")
        return method

    def latencies(
        self,
        shape: ModelShape,
        items: Sequence[tuple[Deployment, Workload, int]],
        method: str,
    ) -> list[Latency]:
        """Latencies of many (deployment, workload, batch per replica) in one booster call."""
        gpus = [self.catalog.get(dep.gpu) for dep, _, _ in items]
        heur = [latency(shape, d, g, w, b) for (d, w, b), g in zip(items, gpus, strict=True)]
        if method != "regressor" or self.corrector is None:
            return heur
        rows = [
            feature_row(shape, d, g, w, b, lat)
            for (d, w, b), g, lat in zip(items, gpus, heur, strict=True)
        ]
        factors = self.corrector.log_factors(rows, [dep.gpu for dep, _, _ in items])
        return [
            apply_correction(lat, w, ft, fe)
            for lat, (_, w, _), (ft, fe) in zip(heur, items, factors, strict=True)
        ]


@functools.lru_cache(maxsize=1)
def default_simulator() -> Simulator:
    """The built-in catalog with the shipped corrector (loaded once per process, read-only)."""
    return Simulator(default_catalog(), load_corrector())


_site_lock = threading.Lock()
_site_cache: dict[Path, tuple[tuple[int, int], Simulator]] = {}


def simulator_for(data_dir: Path | None) -> Simulator:
    """The site's calibrated simulator when ``data_dir`` holds one, else the shipped one.

    Costs one ``stat`` per call; the artefact is reloaded when the file changes.
    """
    if data_dir is None:
        return default_simulator()
    from appliance.sim import calibration

    path = calibration.site_path(data_dir)
    try:
        st = path.stat()
    except OSError:
        return default_simulator()
    stamp = (st.st_mtime_ns, st.st_size)
    with _site_lock:
        cached = _site_cache.get(path)
        if cached is not None and cached[0] == stamp:
            return cached[1]
    loaded = calibration.load(data_dir)
    if loaded is None:
        return default_simulator()
    sim = Simulator(default_catalog(), loaded[0], loaded[1])
    with _site_lock:
        _site_cache[path] = (stamp, sim)
    return sim


def check_deployment(shape: ModelShape, dep: Deployment, gpu: GpuSpec) -> None:
    """Reject layouts no engine can run (raises ``SimInputError``)."""
    if dep.dtype not in DTYPES:
        raise SimInputError(f"unknown dtype {dep.dtype!r}; use one of {', '.join(DTYPES)}")
    if dep.engine not in ENGINES:
        raise SimInputError(f"unknown engine {dep.engine!r}; use one of {', '.join(ENGINES)}")
    if dep.tp < 1 or dep.pp < 1 or dep.replicas < 1:
        raise SimInputError("tp, pp and replicas must be at least 1")
    if ENGINE_PROFILES[dep.engine].tensor_parallel and shape.num_heads % dep.tp:
        raise SimInputError(
            f"tp={dep.tp} must divide the model's {shape.num_heads} attention heads",
            code="bad_tp",
        )
    if dep.pp > shape.num_layers:
        raise SimInputError(f"pp={dep.pp} exceeds the model's {shape.num_layers} layers")


def check_workload(work: Workload) -> None:
    """Reject empty or absurd workloads."""
    if not (1 <= work.input_tokens <= MAX_TOKENS and 1 <= work.output_tokens <= MAX_TOKENS):
        raise SimInputError(f"input and output tokens must be between 1 and {MAX_TOKENS}")
    if not 1 <= work.batch <= 1 << 16:
        raise SimInputError("batch must be between 1 and 65536")


def cost_per_million(gpu: GpuSpec, gpus: int, output_tokens_per_s: float) -> float:
    """USD per million output tokens at the given throughput."""
    if output_tokens_per_s <= 0:
        return math.inf
    return gpu.price_per_hour * gpus / 3600.0 / output_tokens_per_s * 1e6


def predict(
    model: str | ModelShape,
    deployment: Deployment,
    workload: Workload,
    *,
    method: str | None = None,
    sim: Simulator | None = None,
) -> Prediction:
    """Predict TTFT, TPOT, end-to-end time, throughput and memory of a static batch."""
    sim = sim or default_simulator()
    shape = resolve_model(model) if isinstance(model, str) else model
    gpu = sim.catalog.get(deployment.gpu)
    check_deployment(shape, deployment, gpu)
    check_workload(workload)
    chosen = sim.resolve_method(method)
    per_replica = math.ceil(workload.batch / deployment.replicas)
    mem = memory_per_gpu(shape, deployment, workload, gpu, per_replica)
    lat = sim.latencies(shape, [(deployment, workload, per_replica)], chosen)[0]
    fits = mem.total_gib <= mem.usable_gib
    notes: list[str] = []
    if not fits:
        if mem.weights_gib + mem.overhead_gib > mem.usable_gib:
            need = math.ceil(
                mem.weights_gib
                * deployment.gpus_per_replica
                / max(mem.usable_gib - mem.overhead_gib, 1e-9)
            )
            notes.append(
                f"weights alone need {mem.weights_gib:.1f} GiB per GPU of "
                f"{mem.usable_gib:.1f} usable: at least {need} x {gpu.id} per replica"
            )
        else:
            notes.append(
                f"batch {per_replica} per replica needs {mem.total_gib:.1f} GiB per GPU of "
                f"{mem.usable_gib:.1f} usable; at most {mem.max_concurrency} requests of this "
                "length fit"
            )
    if not ENGINE_PROFILES[deployment.engine].tensor_parallel and deployment.tp > 1:
        notes.append(f"{deployment.engine} splits layers across GPUs: tp acts as pipeline stages")
    tokens_per_s = workload.batch * workload.output_tokens / lat.e2e_s
    return Prediction(
        ttft_ms=lat.ttft_s * 1e3,
        tpot_ms=lat.tpot_s * 1e3,
        e2e_s=lat.e2e_s,
        output_tokens_per_s=tokens_per_s,
        memory_gib_per_gpu=mem.total_gib,
        fits=fits,
        method=chosen,
        model=shape.name,
        deployment=deployment,
        workload=workload,
        memory=mem,
        tpot_floor_ms=lat.floor_s * 1e3,
        cost_per_million_tokens=cost_per_million(gpu, deployment.gpus, tokens_per_s),
        notes=notes,
    )


def recommend(
    model: str | ModelShape,
    gpus: Sequence[str],
    num_gpus: int,
    *,
    input_tokens: int,
    output_tokens: int,
    concurrency: int,
    slo: Slo | None = None,
    method: str | None = None,
    search: str = "auto",
    engine: str = "vllm",
    dtypes: Sequence[str] | None = None,
    limit: int = 10,
    sim: Simulator | None = None,
) -> Recommendation:
    """Rank deployments of ``model`` on up to ``num_gpus`` GPUs that meet ``slo`` at least cost."""
    from appliance.sim.search import SearchRequest, run_search

    sim = sim or default_simulator()
    shape = resolve_model(model) if isinstance(model, str) else model
    if not gpus:
        raise SimInputError("give at least one GPU id")
    specs = [sim.catalog.get(g) for g in gpus]
    if num_gpus < 1 or num_gpus > 4096:
        raise SimInputError("--gpus must be between 1 and 4096")
    if concurrency < 1:
        raise SimInputError("concurrency must be at least 1")
    if engine not in ENGINES:
        raise SimInputError(f"unknown engine {engine!r}; use one of {', '.join(ENGINES)}")
    check_workload(Workload(input_tokens, output_tokens, 1))
    for d in dtypes or ():
        if d not in DTYPES:
            raise SimInputError(f"unknown dtype {d!r}; use one of {', '.join(DTYPES)}")
    req = SearchRequest(
        shape=shape,
        gpus=specs,
        num_gpus=num_gpus,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        concurrency=concurrency,
        slo=slo or Slo(),
        method=sim.resolve_method(method),
        strategy=search,
        engine=engine,
        dtypes=list(dtypes) if dtypes else None,
        limit=limit,
    )
    return run_search(sim, req)
