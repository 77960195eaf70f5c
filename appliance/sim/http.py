"""HTTP surface of the simulator.

``POST /api/sim/predict`` and ``POST /api/sim/recommend`` answer and record each run (header
``X-Sim-Run-Id``); ``GET /api/sim/runs`` lists recorded runs and ``GET /api/sim/runs/{id}``
returns one with its full request and result. ``/api/sim/calibration`` shows (GET), installs
(POST, CSV body) and removes (DELETE) the site calibration of the data directory.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
from aiohttp import web

from appliance.sim import calibration
from appliance.sim.errors import SimInputError
from appliance.sim.service import Simulator, predict, recommend, simulator_for
from appliance.sim.structs import Deployment, Slo, Workload

if TYPE_CHECKING:
    from appliance.store.state import StateStore

log = logging.getLogger(__name__)
#: The state store keeps the newest this many runs.
MAX_STORED_RUNS = 10_000
#: Most runs one ``GET /api/sim/runs`` returns.
MAX_LIST = 500
RUN_ID_HEADER = "X-Sim-Run-Id"


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
    """One answered request, recorded so runs can be compared later."""

    id: str
    kind: str
    created_at: float
    model: str
    method: str
    #: Version of the regressor artefact loaded when the run was answered ("" without one).
    artefact: str
    request: dict[str, Any]
    result: dict[str, Any]


def summarize(run: SimRun) -> dict[str, Any]:
    """The few numbers that identify a run in a listing (the full result is under its id)."""
    out: dict[str, Any] = {
        "id": run.id,
        "kind": run.kind,
        "created_at": run.created_at,
        "model": run.model,
        "method": run.method,
        "artefact": run.artefact,
        "request": run.request,
    }
    res = run.result
    if run.kind == "predict":
        keys = ("ttft_ms", "tpot_ms", "e2e_s", "output_tokens_per_s", "memory_gib_per_gpu", "fits")
        out["summary"] = {k: res.get(k) for k in keys}
    else:
        cands = res.get("candidates") or []
        out["summary"] = {
            "feasible": res.get("feasible"),
            "evaluated": res.get("evaluated"),
            "top": cands[0] if cands else None,
        }
    return out


#: Returns the app's state store, or None where there is none (bare apps, unit tests).
StoreGetter = Callable[[], "StateStore | None"]


class RunLog:
    """Where runs go: the state store's ``sim_runs`` table, or memory when there is no store.

    A run whose write fails (store not open yet, database locked past its timeout) is kept in
    memory instead, so answering never depends on recording; reads look in both places.
    """

    def __init__(self, store_getter: StoreGetter | None = None, max_memory: int = 1000) -> None:
        self._store_getter = store_getter
        self._memory: list[SimRun] = []
        self._max_memory = max_memory

    @property
    def memory(self) -> list[SimRun]:
        """Runs held in memory (all of them when there is no store)."""
        return self._memory

    def _store(self) -> StateStore | None:
        return self._store_getter() if self._store_getter is not None else None

    async def add(self, run: SimRun) -> None:
        """Record ``run``; prune the store to the newest ``MAX_STORED_RUNS``."""
        store = self._store()
        if store is not None:
            try:
                async with store.transaction() as conn:
                    await conn.execute(
                        "INSERT INTO sim_runs (id, kind, created_at, model, method, artefact,"
                        " request, result) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            run.id,
                            run.kind,
                            run.created_at,
                            run.model,
                            run.method,
                            run.artefact,
                            msgspec.json.encode(run.request).decode(),
                            msgspec.json.encode(run.result).decode(),
                        ),
                    )
                    await conn.execute(
                        "DELETE FROM sim_runs WHERE id IN (SELECT id FROM sim_runs"
                        " ORDER BY created_at DESC, id DESC LIMIT -1 OFFSET ?)",
                        (MAX_STORED_RUNS,),
                    )
                return
            except (RuntimeError, sqlite3.Error) as exc:
                log.warning("sim run %s kept in memory only: %s", run.id, exc)
        self._memory.append(run)
        del self._memory[: -self._max_memory]

    async def _stored(self, where: str, params: list[Any], limit: int) -> list[SimRun]:
        store = self._store()
        if store is None:
            return []
        try:
            rows = await store.fetchall(
                "SELECT id, kind, created_at, model, method, artefact, request, result"
                f" FROM sim_runs{where} ORDER BY created_at DESC, id DESC LIMIT ?",
                [*params, limit],
            )
        except (RuntimeError, sqlite3.Error) as exc:
            log.warning("sim runs unreadable from the state store: %s", exc)
            return []
        return [
            SimRun(
                id=r["id"],
                kind=r["kind"],
                created_at=r["created_at"],
                model=r["model"],
                method=r["method"],
                artefact=r["artefact"],
                request=msgspec.json.decode(r["request"]),
                result=msgspec.json.decode(r["result"]),
            )
            for r in rows
        ]

    async def list(
        self,
        *,
        kind: str | None = None,
        model: str | None = None,
        before: float | None = None,
        limit: int = 50,
    ) -> list[SimRun]:
        """Newest first, optionally filtered by kind, model and ``created_at < before``."""
        clauses: list[str] = []
        params: list[Any] = []
        for column, value in (("kind", kind), ("model", model)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if before is not None:
            clauses.append("created_at < ?")
            params.append(before)
        where = " WHERE " + " AND ".join(clauses) if clauses else ""
        found = await self._stored(where, params, limit)
        found += [
            r
            for r in self._memory
            if (kind is None or r.kind == kind)
            and (model is None or r.model == model)
            and (before is None or r.created_at < before)
        ]
        found.sort(key=lambda r: (r.created_at, r.id), reverse=True)
        return found[:limit]

    async def get(self, run_id: str) -> SimRun | None:
        """The run with this id, or None."""
        found = await self._stored(" WHERE id = ?", [run_id], 1)
        if found:
            return found[0]
        return next((r for r in self._memory if r.id == run_id), None)


SIMULATOR_KEY = web.AppKey("sim_simulator", Simulator)
RUNS_KEY = web.AppKey("sim_runs", RunLog)
DATA_DIR_KEY = web.AppKey("sim_data_dir", Path)
STORE_KEY = web.AppKey("sim_store", object)


def simulator_of(app: web.Application) -> Simulator:
    """A fixed simulator (tests), else the data directory's: its site calibration, if any."""
    fixed = app.get(SIMULATOR_KEY)
    return fixed if fixed is not None else simulator_for(app.get(DATA_DIR_KEY))


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
    sim = simulator_of(request.app)
    loop = asyncio.get_running_loop()
    try:
        result = await loop.run_in_executor(None, functools.partial(run, sim, body))
    except SimInputError as exc:
        return _error(400, exc.code, exc.message)
    except msgspec.ValidationError as exc:
        return _error(400, "invalid_request", str(exc))
    runs = request.app.get(RUNS_KEY)
    headers: dict[str, str] = {}
    if runs is not None:
        decoded: dict[str, Any] = msgspec.json.decode(result)
        run = SimRun(
            id=uuid.uuid4().hex,
            kind=kind,
            created_at=time.time(),
            model=str(decoded.get("model", body.model)),
            method=str(decoded.get("method", "")),
            artefact=sim.corrector.meta.version if sim.corrector is not None else "",
            request=msgspec.to_builtins(body),
            result=decoded,
        )
        await runs.add(run)
        headers[RUN_ID_HEADER] = run.id
    return web.Response(body=result, content_type="application/json", headers=headers)


async def predict_view(request: web.Request) -> web.Response:
    """Predict the metrics of one deployment under a static batch."""
    return await _handle(request, "predict", PredictRequest, _run_predict)


async def recommend_view(request: web.Request) -> web.Response:
    """Rank deployments that meet the SLOs at least cost."""
    return await _handle(request, "recommend", RecommendRequest, _run_recommend)


async def runs_view(request: web.Request) -> web.Response:
    """``GET /api/sim/runs?kind=&model=&before=&limit=``: recorded runs, newest first."""
    q = request.query
    kind = q.get("kind")
    if kind is not None and kind not in ("predict", "recommend"):
        return _error(400, "invalid_request", "kind must be predict or recommend")
    try:
        limit = int(q.get("limit", "50"))
        before = float(q["before"]) if "before" in q else None
    except ValueError:
        return _error(400, "invalid_request", "limit must be an integer and before a number")
    limit = max(1, min(limit, MAX_LIST))
    runs = await request.app[RUNS_KEY].list(
        kind=kind, model=q.get("model"), before=before, limit=limit
    )
    return web.json_response({"runs": [summarize(r) for r in runs]}, dumps=_dumps)


async def run_view(request: web.Request) -> web.Response:
    """``GET /api/sim/runs/{id}``: one recorded run with its full request and result."""
    run = await request.app[RUNS_KEY].get(request.match_info["id"])
    if run is None:
        return _error(404, "not_found", f"no simulator run {request.match_info['id']!r}")
    return web.Response(body=msgspec.json.encode(run), content_type="application/json")


def _dumps(obj: Any) -> str:
    return msgspec.json.encode(obj).decode()


def _calibration_body(report: calibration.Calibration | None) -> web.Response:
    return web.Response(
        body=msgspec.json.encode({"active": report is not None, "calibration": report}),
        content_type="application/json",
    )


async def calibration_view(request: web.Request) -> web.Response:
    """The site calibration in use (``active`` false: the shipped regressor)."""
    return _calibration_body(simulator_of(request.app).calibration)


async def calibrate_view(request: web.Request) -> web.Response:
    """Retrain the regressor with this site's measurements (CSV body) and install it."""
    data_dir = request.app.get(DATA_DIR_KEY)
    if data_dir is None:
        return _error(409, "no_data_dir", "this server has no data directory to calibrate")
    raw = await request.read()
    try:
        rows = calibration.parse_csv(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return _error(400, "invalid_request", "the measurements must be UTF-8 CSV")
    except SimInputError as exc:
        return _error(400, exc.code, exc.message)
    fit = functools.partial(calibration.calibrate, rows, source=raw, nthread=1)
    corr, report = await asyncio.get_running_loop().run_in_executor(None, fit)
    await asyncio.to_thread(calibration.save, data_dir, corr, report)
    await _audit(request, "sim.calibrate",
                 {"rows": report.site_rows, "gpus": report.gpus, "sha256": report.source_sha256})
    return _calibration_body(report)


async def reset_calibration_view(request: web.Request) -> web.Response:
    """Remove the site calibration: predictions go back to the shipped regressor."""
    data_dir = request.app.get(DATA_DIR_KEY)
    if data_dir is not None and await asyncio.to_thread(calibration.reset, data_dir):
        await _audit(request, "sim.calibration.reset", {})
    return _calibration_body(None)


async def _audit(request: web.Request, action: str, detail: dict[str, Any]) -> None:
    store_getter = request.app.get(STORE_KEY)
    store = store_getter() if callable(store_getter) else None
    if store is None:
        return
    from appliance.identity import audit
    from appliance.identity.http import principal_of, source_address

    await audit.write(store, actor=principal_of(request).name, action=action,
                      target="sim/corrector-site", detail=detail,
                      source_address=source_address(request))


def add_routes(
    app: web.Application,
    store_getter: StoreGetter | None = None,
    *,
    data_dir: Path | None = None,
    operations: list[tuple[str, str, str]] | None = None,
) -> None:
    """Register the simulator's routes and its run log on ``app``.

    ``store_getter`` returns the app's ``StateStore`` (runs go to its ``sim_runs`` table,
    calibrations to its audit trail) or ``None``; without one, runs are kept in memory (the
    newest 1000). ``data_dir`` holds the site calibration; ``operations`` is the control
    API's list feeding /api/openapi.json.
    """
    if RUNS_KEY not in app:
        app[RUNS_KEY] = RunLog(store_getter)
    if data_dir is not None:
        app[DATA_DIR_KEY] = data_dir
    app[STORE_KEY] = store_getter
    routes = (
        ("POST", "/api/sim/predict", predict_view),
        ("POST", "/api/sim/recommend", recommend_view),
        ("GET", "/api/sim/runs", runs_view),
        ("GET", "/api/sim/runs/{id}", run_view),
        ("GET", "/api/sim/calibration", calibration_view),
        ("POST", "/api/sim/calibration", calibrate_view),
        ("DELETE", "/api/sim/calibration", reset_calibration_view),
    )
    for method, path, handler in routes:
        app.router.add_route(method, path, handler)
        if operations is not None:
            operations.append((method, path, (handler.__doc__ or "").strip().split("\n")[0]))
