"""HTTP surface of the simulator: ``POST /api/sim/predict`` and ``POST /api/sim/recommend``."""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import msgspec
from aiohttp import web

from appliance.sim.errors import SimInputError
from appliance.sim.service import Simulator, default_simulator, predict, recommend
from appliance.sim.structs import Deployment, Slo, Workload


class PredictRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Body of ``POST /api/sim/predict``."""

    model: str
    gpu: str
    input_tokens: int
    output_tokens: int
    batch: int = 1
    gpus: int | None = None
    tp: int = 1
    pp: int = 1
    dtype: str = "bf16"
    engine: str = "vllm"
    method: str | None = None


class RecommendRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Body of ``POST /api/sim/recommend``."""

    model: str
    gpu: list[str]
    gpus: int
    input_tokens: int
    output_tokens: int
    concurrency: int
    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2e_s: float | None = None
    tokens_per_s_per_user: float | None = None
    total_tokens_per_s: float | None = None
    method: str | None = None
    search: str = "auto"
    engine: str = "vllm"
    dtypes: list[str] | None = None
    limit: int = 10


class SimRun(msgspec.Struct, frozen=True):
    """One answered request, kept so runs can be compared (the store records them later)."""

    kind: str
    request: dict[str, Any]
    result: dict[str, Any]


SIMULATOR_KEY = web.AppKey("sim_simulator", Simulator)
RUNS_KEY = web.AppKey("sim_runs", list[SimRun])
MAX_RUNS = 1000


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


def _run_predict(sim: Simulator, req: PredictRequest) -> bytes:
    total = req.gpus or req.tp * req.pp
    if total < req.tp * req.pp:
        raise SimInputError(f"gpus={total} is fewer than tp x pp = {req.tp * req.pp}")
    dep = msgspec.convert(
        {
            "gpu": req.gpu,
            "tp": req.tp,
            "pp": req.pp,
            "replicas": total // (req.tp * req.pp),
            "dtype": req.dtype,
            "engine": req.engine,
        },
        Deployment,
    )
    work = Workload(req.input_tokens, req.output_tokens, req.batch)
    return msgspec.json.encode(predict(req.model, dep, work, method=req.method, sim=sim))


def _run_recommend(sim: Simulator, req: RecommendRequest) -> bytes:
    slo = Slo(
        req.ttft_ms, req.tpot_ms, req.e2e_s, req.tokens_per_s_per_user, req.total_tokens_per_s
    )
    rec = recommend(
        req.model,
        req.gpu,
        req.gpus,
        input_tokens=req.input_tokens,
        output_tokens=req.output_tokens,
        concurrency=req.concurrency,
        slo=slo,
        method=req.method,
        search=req.search,
        engine=req.engine,
        dtypes=req.dtypes,
        limit=max(1, min(req.limit, 100)),
        sim=sim,
    )
    return msgspec.json.encode(rec)


async def _handle(request: web.Request, kind: str, body_type: type[Any], run: Any) -> web.Response:
    raw = await request.read()
    try:
        body = msgspec.json.decode(raw, type=body_type)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        return _error(400, "invalid_request", str(exc))
    sim = request.app.get(SIMULATOR_KEY) or default_simulator()
    loop = asyncio.get_running_loop()
    try:
        result = await loop.run_in_executor(None, functools.partial(run, sim, body))
    except SimInputError as exc:
        return _error(400, exc.code, exc.message)
    except msgspec.ValidationError as exc:
        return _error(400, "invalid_request", str(exc))
    runs = request.app.get(RUNS_KEY)
    if runs is not None:
        runs.append(SimRun(kind, msgspec.to_builtins(body), msgspec.json.decode(result)))
        del runs[:-MAX_RUNS]
    return web.Response(body=result, content_type="application/json")


async def predict_view(request: web.Request) -> web.Response:
    """Predict the metrics of one deployment under a static batch."""
    return await _handle(request, "predict", PredictRequest, _run_predict)


async def recommend_view(request: web.Request) -> web.Response:
    """Rank deployments that meet the SLOs at least cost."""
    return await _handle(request, "recommend", RecommendRequest, _run_recommend)


def add_routes(app: web.Application) -> None:
    """Register the simulator's routes (and an in-memory run log) on ``app``."""
    if RUNS_KEY not in app:
        app[RUNS_KEY] = []
    app.router.add_post("/api/sim/predict", predict_view)
    app.router.add_post("/api/sim/recommend", recommend_view)
