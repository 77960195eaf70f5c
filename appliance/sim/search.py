"""Configuration search: enumerate, or evolve when the space is large, to meet SLOs at least cost.

A configuration (a "gene") is GPU type, dtype, TP, PP, replicas and max batch. It is scored
under steady load: ``concurrency`` users spread over the replicas, each replica running at
most ``max batch`` requests, the rest queueing. New requests' prefills interleave with decode
steps, so TPOT pays the share of prefill time that the other requests in the batch bring.
"""

from __future__ import annotations

import math
import random
import time

import msgspec

from appliance.sim.hardware import GpuSpec
from appliance.sim.heuristic import ENGINE_PROFILES, GIB, Latency, memory_per_gpu, weight_bytes
from appliance.sim.service import Simulator, cost_per_million
from appliance.sim.shapes import ModelShape
from appliance.sim.structs import Candidate, Deployment, Recommendation, Slo, Workload

#: Above this many configurations, ``auto`` search switches from enumeration to evolution.
ENUMERATE_LIMIT = 40_000
_NATIVE_FP8 = "fp8"

Gene = tuple[int, str, int, int, int, int]  # gpu index, dtype, tp, pp, replicas, max batch


class SearchRequest(msgspec.Struct):
    """Everything one search needs, already validated."""

    shape: ModelShape
    gpus: list[GpuSpec]
    num_gpus: int
    input_tokens: int
    output_tokens: int
    concurrency: int
    slo: Slo
    method: str
    strategy: str
    engine: str
    dtypes: list[str] | None
    limit: int


class _Space(msgspec.Struct):
    dtypes: list[list[str]]  # per GPU index
    tps: list[int]
    pps: list[int]
    batches: list[int]


def _powers(limit: int) -> list[int]:
    out, v = [], 1
    while v <= limit:
        out.append(v)
        v *= 2
    return out


def build_space(req: SearchRequest) -> _Space:
    """Options per gene position."""
    shape = req.shape
    tensor = ENGINE_PROFILES[req.engine].tensor_parallel
    per_node = max(g.max_per_node for g in req.gpus)
    tps = [
        t for t in _powers(min(req.num_gpus, per_node)) if not tensor or shape.num_heads % t == 0
    ]
    pps = [p for p in _powers(min(req.num_gpus, 16)) if p <= shape.num_layers]
    dtypes = []
    for g in req.gpus:
        if req.dtypes:
            dtypes.append(list(req.dtypes))
        else:  # full precision, plus fp8 where the GPU computes in it natively
            dtypes.append(["bf16", _NATIVE_FP8] if _NATIVE_FP8 in g.tflops else ["bf16"])
    batches = sorted({*_powers(min(512, 2 * req.concurrency)), req.concurrency})
    return _Space(dtypes=dtypes, tps=tps, pps=pps, batches=batches)


def space_size(req: SearchRequest, space: _Space) -> int:
    """Number of genes the space holds (counting only layouts within ``num_gpus``)."""
    layouts = sum(
        req.num_gpus // (t * p) for t in space.tps for p in space.pps if t * p <= req.num_gpus
    )
    return sum(len(d) for d in space.dtypes) * layouts * len(space.batches)


def enumerate_genes(req: SearchRequest, space: _Space) -> list[Gene]:
    """Every gene of the space."""
    genes: list[Gene] = []
    for gi, dts in enumerate(space.dtypes):
        for dt in dts:
            for tp in space.tps:
                for pp in space.pps:
                    if tp * pp > req.num_gpus:
                        continue
                    for rep in range(1, req.num_gpus // (tp * pp) + 1):
                        genes.extend((gi, dt, tp, pp, rep, b) for b in space.batches)
    return genes


class _Scorer:
    """Scores genes, batching latency look-ups (one booster call per round) and caching them."""

    def __init__(self, sim: Simulator, req: SearchRequest) -> None:
        self.sim, self.req = sim, req
        self.lat: dict[tuple[int, str, int, int, int], Latency] = {}
        self.scored: dict[Gene, Candidate] = {}

    def _dep(self, g: Gene) -> Deployment:
        gi, dt, tp, pp, rep, _ = g
        return Deployment(
            gpu=self.req.gpus[gi].id,
            tp=tp,
            pp=pp,
            replicas=rep,
            dtype=dt,  # type: ignore[arg-type]
            engine=self.req.engine,  # type: ignore[arg-type]
        )

    def _batch(self, g: Gene) -> int:
        return max(1, min(g[5], math.ceil(self.req.concurrency / g[4])))

    def score(self, genes: list[Gene]) -> list[Candidate | None]:
        """Candidate per gene, or None where the layout is invalid or does not fit memory."""
        req = self.req
        todo: dict[tuple[int, str, int, int, int], tuple[Deployment, Workload, int]] = {}
        for g in genes:
            if g in self.scored:
                continue
            dep = self._dep(g)
            for b in (1, self._batch(g)):
                key = (g[0], g[1], g[2], g[3], b)
                if key not in self.lat and key not in todo:
                    todo[key] = (dep, Workload(req.input_tokens, req.output_tokens, b), b)
        if todo:
            keys = list(todo)
            values = self.sim.latencies(req.shape, [todo[k] for k in keys], req.method)
            self.lat.update(zip(keys, values, strict=True))
        out: list[Candidate | None] = []
        for g in genes:
            if g not in self.scored:
                cand = self._candidate(g)
                if cand is None:
                    out.append(None)
                    continue
                self.scored[g] = cand
            out.append(self.scored[g])
        return out

    def _candidate(self, g: Gene) -> Candidate | None:
        req = self.req
        gpu = req.gpus[g[0]]
        dep = self._dep(g)
        if dep.gpus > req.num_gpus:
            return None
        b = self._batch(g)
        work = Workload(req.input_tokens, req.output_tokens, b)
        mem = memory_per_gpu(req.shape, dep, work, gpu, b)
        if mem.total_gib > mem.usable_gib:
            return None
        one, full = self.lat[(g[0], g[1], g[2], g[3], 1)], self.lat[(g[0], g[1], g[2], g[3], b)]
        out_tok = req.output_tokens
        tpot = full.tpot_s + one.ttft_s * (b - 1) / out_tok
        service = one.ttft_s + (out_tok - 1) * tpot
        per_replica = math.ceil(req.concurrency / g[4])
        waves = math.ceil(per_replica / b)
        ttft = one.ttft_s + (full.tpot_s if b > 1 else 0.0) + (waves - 1) / 2 * service
        e2e = ttft + (out_tok - 1) * tpot
        total_tps = g[4] * b * out_tok / service
        violations = _violations(req.slo, ttft * 1e3, tpot * 1e3, e2e, 1.0 / tpot, total_tps)
        return Candidate(
            rank=0,
            deployment=dep,
            max_batch=g[5],
            ttft_ms=ttft * 1e3,
            tpot_ms=tpot * 1e3,
            e2e_s=e2e,
            tokens_per_s_per_user=1.0 / tpot,
            total_tokens_per_s=total_tps,
            memory_gib_per_gpu=mem.total_gib,
            cost_per_hour=gpu.price_per_hour * dep.gpus,
            cost_per_million_tokens=cost_per_million(gpu, dep.gpus, total_tps),
            meets_slo=not violations,
            violations=violations,
        )


def _violations(
    slo: Slo, ttft_ms: float, tpot_ms: float, e2e_s: float, user_tps: float, total_tps: float
) -> list[str]:
    out = []
    if slo.ttft_ms is not None and ttft_ms > slo.ttft_ms:
        out.append(f"TTFT {ttft_ms:.0f} ms > {slo.ttft_ms:g} ms")
    if slo.tpot_ms is not None and tpot_ms > slo.tpot_ms:
        out.append(f"TPOT {tpot_ms:.1f} ms > {slo.tpot_ms:g} ms")
    if slo.e2e_s is not None and e2e_s > slo.e2e_s:
        out.append(f"e2e {e2e_s:.1f} s > {slo.e2e_s:g} s")
    if slo.tokens_per_s_per_user is not None and user_tps < slo.tokens_per_s_per_user:
        out.append(f"{user_tps:.0f} tok/s per user < {slo.tokens_per_s_per_user:g}")
    if slo.total_tokens_per_s is not None and total_tps < slo.total_tokens_per_s:
        out.append(f"{total_tps:.0f} tok/s total < {slo.total_tokens_per_s:g}")
    return out


def _key(c: Candidate) -> tuple[float, ...]:
    # SLO-meeting first, then cheapest per hour, then cheapest per token, then fastest
    return (
        0.0 if c.meets_slo else 1.0,
        float(len(c.violations)),
        c.cost_per_hour,
        c.cost_per_million_tokens,
        c.e2e_s,
    )


def _evolve(req: SearchRequest, space: _Space, scorer: _Scorer, seed: int = 7) -> None:
    """Genetic algorithm over genes; results accumulate in the scorer."""
    rng = random.Random(seed)
    layouts = [(t, p) for t in space.tps for p in space.pps if t * p <= req.num_gpus]

    def random_gene() -> Gene:
        gi = rng.randrange(len(req.gpus))
        tp, pp = rng.choice(layouts)
        rep = rng.randint(1, req.num_gpus // (tp * pp))
        return (gi, rng.choice(space.dtypes[gi]), tp, pp, rep, rng.choice(space.batches))

    def fitness(c: Candidate | None) -> tuple[float, ...]:
        return (2.0, math.inf) if c is None else _key(c)

    def repair(g: Gene) -> Gene:
        gi, dt, tp, pp, rep, b = g
        if dt not in space.dtypes[gi]:
            dt = space.dtypes[gi][0]
        return (gi, dt, tp, pp, max(1, min(rep, req.num_gpus // (tp * pp))), b)

    pop = [random_gene() for _ in range(64)]
    for _ in range(60):
        scores = scorer.score(pop)
        ranked = [g for _, g in sorted(zip(scores, pop, strict=True), key=lambda x: fitness(x[0]))]
        nxt = ranked[:6]
        while len(nxt) < len(pop):
            a = min(rng.sample(ranked, 3), key=ranked.index)
            b = min(rng.sample(ranked, 3), key=ranked.index)
            child = list(a)
            for i in range(len(child)):
                if rng.random() < 0.5:
                    child[i] = b[i]
            if rng.random() < 0.3:
                mutant = random_gene()
                i = rng.randrange(6)
                child[i] = mutant[i]
                if i in (2, 3):
                    child[2], child[3] = mutant[2], mutant[3]
            nxt.append(repair((child[0], child[1], child[2], child[3], child[4], child[5])))  # type: ignore[arg-type]
        pop = nxt


def _weights_explanation(req: SearchRequest) -> str | None:
    reasons = []
    for g in req.gpus:
        dts = req.dtypes or (["bf16", _NATIVE_FP8] if _NATIVE_FP8 in g.tflops else ["bf16"])
        smallest = min(dts, key=lambda d: weight_bytes(req.shape, d))
        need_bytes = weight_bytes(req.shape, smallest)
        prof = ENGINE_PROFILES[req.engine]
        usable = g.memory_gib * prof.memory_utilization - prof.memory_overhead_gib
        need = math.ceil(need_bytes / GIB / max(usable, 1e-9))
        if need <= req.num_gpus:
            return None
        reasons.append(
            f"needs at least {need} x {g.id} for weights alone "
            f"({need_bytes / GIB:.0f} GiB in {smallest}, {usable:.0f} GiB usable per GPU)"
        )
    return "; ".join(reasons) + f"; only {req.num_gpus} GPU(s) available"


def _explain(req: SearchRequest, ranked: list[Candidate], evaluated: int) -> str:
    if not ranked:
        weights = _weights_explanation(req)
        if weights:
            return f"Infeasible: {weights}."
        return (
            f"Infeasible: the weights fit, but no layout on {req.num_gpus} GPU(s) holds the KV "
            f"cache of even one {req.input_tokens}+{req.output_tokens}-token request beside them."
        )
    top = ranked[0]
    d = top.deployment
    what = (
        f"{d.gpus} x {d.gpu} (TP{d.tp}, PP{d.pp}, {d.replicas} replica(s), {d.dtype}, "
        f"max batch {top.max_batch})"
    )
    metrics = (
        f"TTFT {top.ttft_ms:.0f} ms, TPOT {top.tpot_ms:.1f} ms, e2e {top.e2e_s:.1f} s, "
        f"{top.total_tokens_per_s:.0f} tok/s total"
    )
    if not top.meets_slo:
        bests = []
        slo = req.slo
        for name, target, best in (
            ("TTFT", slo.ttft_ms, min(c.ttft_ms for c in ranked)),
            ("TPOT", slo.tpot_ms, min(c.tpot_ms for c in ranked)),
            ("e2e", slo.e2e_s, min(c.e2e_s for c in ranked)),
        ):
            if target is not None and best > target:
                bests.append(f"best {name} any layout reaches is {best:.3g} vs target {target:g}")
        why = "; ".join(bests) or "no single layout meets all targets together"
        return f"Infeasible: {why}. Closest: {what}: {metrics}."
    meeting = [c for c in ranked if c.meets_slo]
    text = (
        f"{what} is the cheapest of {len(meeting)} configuration(s) meeting the SLOs "
        f"(of {evaluated} evaluated): ${top.cost_per_hour:.2f}/h, "
        f"${top.cost_per_million_tokens:.2f} per million output tokens; {metrics}."
    )
    dearer = [c for c in meeting[1:] if c.cost_per_hour > top.cost_per_hour]
    if dearer:
        n = dearer[0]
        text += (
            f" The cheapest layout with more or dearer GPUs, {n.deployment.gpus} x "
            f"{n.deployment.gpu} TP{n.deployment.tp}, costs ${n.cost_per_hour:.2f}/h."
        )
    return text


def _dedupe(ranked: list[Candidate], concurrency: int) -> list[Candidate]:
    # a max batch above a replica's share of the users changes nothing: keep the smallest
    seen: set[tuple[Deployment, int]] = set()
    out = []
    for c in sorted(ranked, key=lambda c: c.max_batch):
        eff = min(c.max_batch, math.ceil(concurrency / c.deployment.replicas))
        if (c.deployment, eff) not in seen:
            seen.add((c.deployment, eff))
            out.append(msgspec.structs.replace(c, max_batch=eff))
    return sorted(out, key=_key)


def run_search(sim: Simulator, req: SearchRequest) -> Recommendation:
    """Search the configuration space and rank what it found."""
    start = time.perf_counter()
    space = build_space(req)
    scorer = _Scorer(sim, req)
    strategy = req.strategy
    if strategy == "auto":
        strategy = "enumerate" if space_size(req, space) <= ENUMERATE_LIMIT else "genetic"
    if strategy == "enumerate":
        scorer.score(enumerate_genes(req, space))
    elif strategy == "genetic":
        _evolve(req, space, scorer)
    else:
        from appliance.sim.errors import SimInputError

        raise SimInputError(f"unknown search {req.strategy!r}; use auto, enumerate or genetic")
    ranked = _dedupe(sorted(scorer.scored.values(), key=_key), req.concurrency)
    explanation = _explain(req, ranked, len(scorer.scored))
    top = [msgspec.structs.replace(c, rank=i + 1) for i, c in enumerate(ranked[: req.limit])]
    return Recommendation(
        model=req.shape.name,
        feasible=bool(top) and top[0].meets_slo,
        method=req.method,
        search=strategy,
        candidates=top,
        explanation=explanation,
        evaluated=len(scorer.scored),
        elapsed_ms=(time.perf_counter() - start) * 1e3,
    )
