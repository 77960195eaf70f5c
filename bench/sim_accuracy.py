"""Accuracy and speed of the performance simulator.

Accuracy: MdAPE and MAPE of TTFT, TPOT and end-to-end time for the heuristic and the regressor
under leave-one-GPU-out and leave-one-model-out evaluation (the regressor is retrained without
the held-out group for every fold; the heuristic has no fitted terms). Speed: predict,
heuristic recommend and a full search over every catalog GPU type, 16 GPUs.

Usage: python bench/sim_accuracy.py [DATA_DIR] [--nthread N] [--published CSV]

External check: ``bench/data/sim_published.csv`` holds static-batch figures printed by other
sources (TensorRT-LLM performance docs, vLLM CI, AMD, Oracle, Intel; see
``bench/data/sim_published.md``) that neither method was fitted to. The shipped artefact
predicts each row and the table reports MdAPE per metric and per source.

TPOT is not measured directly in the data: its reference is (measured e2e - TTFT) / (O - 1),
with the measured TTFT where the TTFT table has the same configuration and the heuristic's
otherwise, on rows where that TTFT is under 10 % of the measured e2e and the batch's KV cache
fits at once (see ``tpot_reference``). Besides the pooled table it prints MdAPE per held-out
GPU, and the summary names every held-out GPU over 20 %.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from appliance.sim import Deployment, Slo, Workload, predict, recommend
from appliance.sim.catalog import normalise_model_name
from appliance.sim.hardware import default_catalog
from appliance.sim.heuristic import Latency
from appliance.sim.measurements import DATA_DIR, NOT_TRAINED, load_measurements
from appliance.sim.regressor import apply_correction
from appliance.sim.service import Simulator, default_simulator
from appliance.sim.training import Sample, fit_corrector, to_samples

Errors = dict[tuple[str, str, str], list[float]]  # (split, method, metric) -> |APE| list
#: (split, method, metric, held-out group) -> |APE| list
GroupErrors = dict[tuple[str, str, str, str], list[float]]
#: A TPOT reference is only derived where the TTFT it subtracts is under this share of e2e.
TPOT_TTFT_SHARE = 0.1


def _ape(pred: float, true: float) -> float:
    return abs(pred - true) / true


def _ttft_lookup(samples: Sequence[Sample]) -> dict[tuple[object, ...], float]:
    out = {}
    for s in samples:
        m = s.m
        if m.ttft_s:
            out[(m.gpu, m.engine, m.model, m.tp, m.pp, m.batch, m.input_tokens)] = m.ttft_s
    return out


def tpot_reference(s: Sample, ttft_ref: dict[tuple[object, ...], float]) -> float | None:
    """Measured TPOT where the data allows one: (e2e - TTFT) / (O - 1).

    TTFT is the measured one where the TTFT table has the configuration, the heuristic's
    otherwise; the same reference serves both methods. Rows are left out where that TTFT is
    10 % of e2e or more (so even a 2x TTFT error moves the reference by < 11 %) and where the
    batch's KV cache does not fit at once (it then runs in rounds and e2e says nothing about
    the per-request TPOT).
    """
    m = s.m
    if not m.e2e_s or m.output_tokens <= 1 or s.lat.waves > 1:
        return None
    key = (m.gpu, m.engine, m.model, m.tp, m.pp, m.batch, m.input_tokens)
    ttft = ttft_ref.get(key, s.lat.ttft_s)
    if ttft >= TPOT_TTFT_SHARE * m.e2e_s:
        return None
    return (m.e2e_s - ttft) / (m.output_tokens - 1)


def _score(
    split: str,
    group: str,
    test: Sequence[Sample],
    preds: dict[str, list[Latency]],
    ttft_ref: dict[tuple[object, ...], float],
    errors: GroupErrors,
) -> None:
    for method, lats in preds.items():
        for s, lat in zip(test, lats, strict=True):
            m = s.m
            if m.ttft_s:
                errors[(split, method, "TTFT", group)].append(_ape(lat.ttft_s, m.ttft_s))
            if not m.e2e_s:
                continue
            errors[(split, method, "e2e", group)].append(_ape(lat.e2e_s, m.e2e_s))
            ref = tpot_reference(s, ttft_ref)
            if ref is not None:
                errors[(split, method, "TPOT", group)].append(_ape(lat.tpot_s, ref))


def pooled(errors: GroupErrors) -> Errors:
    """The per-group errors pooled over groups."""
    out: Errors = defaultdict(list)
    for (split, method, metric, _), errs in errors.items():
        out[(split, method, metric)].extend(errs)
    return out


def evaluate(samples: list[Sample], nthread: int) -> GroupErrors:
    """Leave-one-group-out errors for both methods, per held-out group."""
    errors: GroupErrors = defaultdict(list)
    ttft_ref = _ttft_lookup(samples)
    splits: dict[str, Callable[[Sample], str]] = {
        "leave-one-GPU-out": lambda s: s.m.gpu,
        "leave-one-model-out": lambda s: normalise_model_name(s.m.model),
    }
    for split, group_of in splits.items():
        for group in sorted({group_of(s) for s in samples}):
            test = [s for s in samples if group_of(s) == group]
            # platforms the shipped artefact does not learn from stay out of every fold too
            train = [s for s in samples if group_of(s) != group and s.m.gpu not in NOT_TRAINED]
            corr = fit_corrector(train, nthread=nthread)
            factors = corr.log_factors([s.features for s in test], [s.m.gpu for s in test])
            work = [Workload(s.m.input_tokens, s.m.output_tokens, s.m.batch) for s in test]
            preds = {
                "heuristic": [s.lat for s in test],
                "regressor": [
                    apply_correction(s.lat, w, ft, fe)
                    for s, w, (ft, fe) in zip(test, work, factors, strict=True)
                ],
            }
            _score(split, group, test, preds, ttft_ref, errors)
    return errors


PUBLISHED = Path(__file__).resolve().parent / "data" / "sim_published.csv"
#: Published metrics that describe one static batch (engine-scheduled max-throughput and
#: online-serving rows are left out: their batch is not known).
STATIC_METRICS = ("output_tokens_per_s", "e2e_s", "ttft_ms")


def published(path: Path, sim: Simulator) -> dict[tuple[str, str], list[float]]:
    """|APE| per (method, metric) and (method, source) on the published static-batch rows."""
    out: dict[tuple[str, str], list[float]] = defaultdict(list)
    with path.open(newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["metric"] in STATIC_METRICS]
    for r in rows:
        if not (r["batch"] and r["input_tokens"] and r["output_tokens"]):
            continue
        dep = Deployment(
            gpu=r["gpu"],
            tp=int(r["tp"] or r["num_gpus"] or 1),
            pp=int(r["pp"] or 1),
            dtype=r["dtype"],  # type: ignore[arg-type]
            engine=r["engine"],  # type: ignore[arg-type]
        )
        work = Workload(int(r["input_tokens"]), int(r["output_tokens"]), int(r["batch"]))
        source = r["source_url"].split("//", 1)[-1].split("/")[0]
        if "TensorRT-LLM" in r["source_url"]:
            source = "TensorRT-LLM docs"
        for method in ("heuristic", "regressor"):
            p = predict(r["model"], dep, work, method=method, sim=sim)
            value = {"output_tokens_per_s": p.output_tokens_per_s, "e2e_s": p.e2e_s}.get(
                r["metric"], p.ttft_ms
            )
            err = _ape(value, float(r["value"]))
            out[(method, r["metric"])].append(err)
            out[(method, source)].append(err)
    return out


def timings() -> list[tuple[str, float]]:
    """Seconds per call of predict, heuristic recommend and full search (16 GPUs)."""
    sim = default_simulator()
    dep, work = Deployment(gpu="h100-sxm", tp=4), Workload(1024, 256, 32)
    predict("llama-3-70b", dep, work, sim=sim)
    n = 200
    start = time.perf_counter()
    for _ in range(n):
        predict("llama-3-70b", dep, work, sim=sim)
    t_predict = (time.perf_counter() - start) / n
    slo = Slo(ttft_ms=500, tpot_ms=50)
    start = time.perf_counter()
    recommend(
        "llama-3-70b",
        ["h100-sxm"],
        16,
        input_tokens=1024,
        output_tokens=256,
        concurrency=50,
        slo=slo,
        method="heuristic",
        sim=sim,
    )
    t_heur = time.perf_counter() - start
    start = time.perf_counter()
    full = recommend(
        "llama-3-70b",
        default_catalog().ids(),
        16,
        input_tokens=1024,
        output_tokens=256,
        concurrency=50,
        slo=slo,
        method="regressor",
        search="enumerate",
        sim=sim,
    )
    t_full = time.perf_counter() - start
    start = time.perf_counter()
    recommend(
        "llama-3-70b",
        default_catalog().ids(),
        16,
        input_tokens=1024,
        output_tokens=256,
        concurrency=50,
        slo=slo,
        method="regressor",
        search="genetic",
        sim=sim,
    )
    t_ga = time.perf_counter() - start
    return [
        ("predict (in-process, regressor)", t_predict),
        ("recommend, heuristic, 1 GPU type x 16", t_heur),
        (f"full search, regressor, 13 types x 16 ({full.evaluated} configs)", t_full),
        ("genetic search, regressor, 13 types x 16", t_ga),
    ]


def main(argv: list[str] | None = None) -> int:
    """Print the accuracy table, the timings and a one-line summary."""
    parser = argparse.ArgumentParser(description="simulator accuracy and speed")
    parser.add_argument("data", nargs="?", type=Path, default=DATA_DIR)
    parser.add_argument("--nthread", type=int, default=2)
    parser.add_argument("--published", type=Path, default=PUBLISHED)
    args = parser.parse_args(argv)
    samples = to_samples(load_measurements(args.data), default_catalog())
    by_group = evaluate(samples, args.nthread)
    errors = pooled(by_group)
    print(f"{'split':<21} {'method':<10} {'metric':<5} {'n':>5} {'MdAPE':>7} {'MAPE':>7}")
    worst: dict[str, float] = {}
    for split in ("leave-one-GPU-out", "leave-one-model-out"):
        for method in ("heuristic", "regressor"):
            for metric in ("TTFT", "TPOT", "e2e"):
                errs = errors.get((split, method, metric), [])
                if not errs:
                    continue
                md, mean = statistics.median(errs) * 100, statistics.fmean(errs) * 100
                if method == "regressor":
                    worst[metric] = max(worst.get(metric, 0.0), md)
                print(
                    f"{split:<21} {method:<10} {metric:<5} {len(errs):>5} {md:>6.1f}% {mean:>6.1f}%"
                )
    print()
    print("per held-out GPU, MdAPE (heuristic / regressor)")
    gpus = sorted({g for (sp, _, _, g) in by_group if sp == "leave-one-GPU-out"})
    for gpu in gpus:
        cells = []
        for metric in ("TTFT", "TPOT", "e2e"):
            pair = []
            for method in ("heuristic", "regressor"):
                errs = by_group.get(("leave-one-GPU-out", method, metric, gpu), [])
                pair.append(f"{statistics.median(errs) * 100:5.1f}%" if errs else "    -")
            cells.append(f"{metric} {' / '.join(pair)}")
        n = len(by_group.get(("leave-one-GPU-out", "regressor", "e2e", gpu), []))
        print(f"  {gpu:<10} {'   '.join(cells)}   (n e2e={n})")
    ext = published(args.published, default_simulator()) if args.published.is_file() else {}
    if ext:
        print()
        print("published static-batch figures never trained on (shipped artefact), MdAPE")
        print(f"  {'metric or source':<30} {'n':>4} {'heuristic':>10} {'regressor':>10}")
        keys = sorted({k for _, k in ext}, key=lambda k: (k not in STATIC_METRICS, k))
        for key in keys:
            h, r = ext[("heuristic", key)], ext[("regressor", key)]
            print(
                f"  {key:<30} {len(h):>4} {statistics.median(h) * 100:>9.1f}% "
                f"{statistics.median(r) * 100:>9.1f}%"
            )
    print()
    for name, seconds in timings():
        print(f"{name:<58} {seconds * 1e3:>9.1f} ms")
    floors = all(v <= 20.0 for v in worst.values())
    misses = sorted(
        {
            gpu
            for (split, method, metric, gpu), errs in by_group.items()
            if split == "leave-one-GPU-out"
            and method == "regressor"
            and statistics.median(errs) > 0.2
        }
    )
    print()
    print(
        "summary: regressor held-out MdAPE (pooled) worst case "
        + ", ".join(f"{k} {v:.1f}%" for k, v in worst.items())
        + f" ({'meets' if floors else 'MISSES'} the 20% floor)"
    )
    if misses:
        print(f"         held-out GPUs over 20% on some metric: {', '.join(misses)}")
    return 0 if floors else 1


if __name__ == "__main__":
    sys.exit(main())
