"""`appliance sim`: predict serving metrics and recommend deployments from the command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import msgspec

from appliance.cli import sim_calibrate
from appliance.cli.common import settings_from
from appliance.kernel.errors import ConfigError
from appliance.sim import (
    Deployment,
    Prediction,
    Recommendation,
    SimInputError,
    Slo,
    Workload,
    predict,
    recommend,
)
from appliance.sim.hardware import DTYPES
from appliance.sim.service import Simulator, simulator_for
from appliance.sim.structs import ENGINES, METHODS

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


def register(sub: Any) -> None:
    """Add the ``sim`` command group to the top-level sub-parsers."""
    parser = sub.add_parser(
        "sim", help="performance simulator: predict, recommend, calibrate with site measurements"
    )
    parser.set_defaults(func=lambda _args: (parser.print_help(), EXIT_USAGE)[1])
    cmds = parser.add_subparsers(dest="sim_command", metavar="SUBCOMMAND")

    p = cmds.add_parser("predict", help="predict metrics of one deployment under a static batch")
    p.add_argument("--model", required=True, help="config.json / .gguf path, or a known name")
    p.add_argument("--gpu", required=True, help="GPU id, e.g. h100-sxm")
    p.add_argument("--gpus", type=int, help="GPUs in total (replicas = gpus / (tp x pp))")
    p.add_argument("--tp", type=int, help="tensor-parallel degree (default: gpus / pp)")
    p.add_argument("--pp", type=int, default=1, help="pipeline-parallel degree")
    p.add_argument("--dtype", choices=DTYPES, default="bf16")
    p.add_argument("--engine", choices=ENGINES, default="vllm")
    p.add_argument("--input-tokens", type=int, required=True)
    p.add_argument("--output-tokens", type=int, required=True)
    p.add_argument("--batch", type=int, default=1, help="requests in the static batch")
    p.add_argument("--method", choices=METHODS, help="default: the most accurate available")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _add_data_dir(p)
    p.set_defaults(func=run_predict)

    r = cmds.add_parser("recommend", help="rank deployments meeting SLOs at least cost")
    r.add_argument("--model", required=True)
    r.add_argument("--gpu", required=True, help="GPU id or comma-separated ids to choose from")
    r.add_argument("--gpus", type=int, required=True, help="most GPUs that may be used")
    r.add_argument("--input-tokens", type=int, required=True)
    r.add_argument("--output-tokens", type=int, required=True)
    r.add_argument("--concurrency", type=int, required=True, help="concurrent users")
    r.add_argument("--ttft-ms", type=float)
    r.add_argument("--tpot-ms", type=float)
    r.add_argument("--e2e-s", type=float)
    r.add_argument("--tokens-per-s-per-user", type=float)
    r.add_argument("--total-tokens-per-s", type=float)
    r.add_argument("--engine", choices=ENGINES, default="vllm")
    r.add_argument("--dtypes", help="comma-separated dtypes to consider (default bf16,fp8)")
    r.add_argument("--method", choices=METHODS)
    r.add_argument("--search", choices=("auto", "enumerate", "genetic"), default="auto")
    r.add_argument("--limit", type=int, default=10, help="configurations to list")
    r.add_argument("--json", action="store_true")
    _add_data_dir(r)
    r.set_defaults(func=run_recommend)
    sim_calibrate.register(cmds)


def _add_data_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        help="use this data directory's site calibration, if any (default: the configured one)",
    )
    p.add_argument("--config", type=Path, metavar="FILE", help="TOML settings file")


def _simulator(args: argparse.Namespace) -> Simulator:
    """The simulator of the configured data directory (its site calibration, if any)."""
    try:
        data_dir = settings_from(args).data_path
    except ConfigError as exc:
        raise SimInputError(exc.message) from None
    return simulator_for(data_dir)


def _fail(code: int, message: str) -> int:
    print(f"appliance sim: {message}", file=sys.stderr)
    return code


def run_predict(args: argparse.Namespace) -> int:
    """Run ``appliance sim predict``."""
    pp = args.pp
    tp = args.tp or max(1, (args.gpus or 1) // max(pp, 1))
    gpus = args.gpus or tp * pp
    if min(tp, pp, gpus) < 1 or gpus < tp * pp:
        return _fail(EXIT_USAGE, f"--gpus {gpus} must be at least --tp x --pp = {tp * pp}")
    try:
        dep = Deployment(
            gpu=args.gpu,
            tp=tp,
            pp=pp,
            replicas=gpus // (tp * pp),
            dtype=args.dtype,
            engine=args.engine,
        )
        work = Workload(args.input_tokens, args.output_tokens, args.batch)
        pred = predict(args.model, dep, work, method=args.method, sim=_simulator(args))
    except SimInputError as exc:
        return _fail(EXIT_USAGE, exc.message)
    if args.json:
        print(msgspec.json.encode(pred).decode())
    else:
        print(format_prediction(pred))
    if not pred.fits:
        print("appliance sim: does not fit: " + "; ".join(pred.notes), file=sys.stderr)
    return EXIT_OK


def run_recommend(args: argparse.Namespace) -> int:
    """Run ``appliance sim recommend``; exit 1 when nothing meets the request."""
    slo = Slo(
        args.ttft_ms, args.tpot_ms, args.e2e_s, args.tokens_per_s_per_user, args.total_tokens_per_s
    )
    try:
        rec = recommend(
            args.model,
            [g for g in args.gpu.split(",") if g],
            args.gpus,
            input_tokens=args.input_tokens,
            output_tokens=args.output_tokens,
            concurrency=args.concurrency,
            slo=slo,
            method=args.method,
            search=args.search,
            engine=args.engine,
            dtypes=args.dtypes.split(",") if args.dtypes else None,
            limit=max(1, args.limit),
            sim=_simulator(args),
        )
    except SimInputError as exc:
        return _fail(EXIT_USAGE, exc.message)
    if args.json:
        print(msgspec.json.encode(rec).decode())
    else:
        print(format_recommendation(rec))
    if not rec.feasible:
        return _fail(EXIT_ERROR, rec.explanation)
    return EXIT_OK


def format_prediction(p: Prediction) -> str:
    """A readable block of one prediction."""
    d, m = p.deployment, p.memory
    rows = [
        ("model", p.model),
        (
            "deployment",
            f"{d.gpus} x {d.gpu}, TP{d.tp} PP{d.pp}, {d.replicas} replica(s), "
            f"{d.dtype}, {d.engine}",
        ),
        (
            "workload",
            f"batch {p.workload.batch} x ({p.workload.input_tokens} in, "
            f"{p.workload.output_tokens} out)",
        ),
        ("method", p.method),
        ("TTFT", f"{p.ttft_ms:.1f} ms"),
        ("TPOT", f"{p.tpot_ms:.2f} ms (floor {p.tpot_floor_ms:.2f} ms)"),
        ("end-to-end", f"{p.e2e_s:.2f} s"),
        ("output tokens/s", f"{p.output_tokens_per_s:.0f}"),
        (
            "memory per GPU",
            f"{p.memory_gib_per_gpu:.1f} GiB of {m.usable_gib:.1f} usable "
            f"(weights {m.weights_gib:.1f}, KV {m.kv_cache_gib:.1f}, "
            f"activations {m.activations_gib:.1f}, engine {m.overhead_gib:.1f})",
        ),
        ("fits", f"{'yes' if p.fits else 'no'}, up to {m.max_concurrency} such requests"),
        ("cost", f"${p.cost_per_million_tokens:.2f} per million output tokens"),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"{k.ljust(width)}  {v}" for k, v in rows]
    lines += [f"note: {n}" for n in p.notes]
    return "\n".join(lines)


def format_recommendation(r: Recommendation) -> str:
    """A ranked table plus the explanation."""
    head = (
        "#",
        "GPUs",
        "layout",
        "dtype",
        "batch",
        "TTFT ms",
        "TPOT ms",
        "e2e s",
        "tok/s",
        "GiB/GPU",
        "$/h",
        "$/Mtok",
        "SLO",
    )
    body = [
        (
            str(c.rank),
            f"{c.deployment.gpus}x{c.deployment.gpu}",
            f"TP{c.deployment.tp} PP{c.deployment.pp} R{c.deployment.replicas}",
            c.deployment.dtype,
            str(c.max_batch),
            f"{c.ttft_ms:.0f}",
            f"{c.tpot_ms:.1f}",
            f"{c.e2e_s:.1f}",
            f"{c.total_tokens_per_s:.0f}",
            f"{c.memory_gib_per_gpu:.1f}",
            f"{c.cost_per_hour:.2f}",
            f"{c.cost_per_million_tokens:.2f}",
            "ok" if c.meets_slo else "; ".join(c.violations),
        )
        for c in r.candidates
    ]
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
    lines = (
        [
            "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
            for row in [head, *body]
        ]
        if body
        else []
    )
    lines.append("")
    lines.append(r.explanation)
    lines.append(
        f"({r.evaluated} configurations, {r.search} search, {r.method}, {r.elapsed_ms:.0f} ms)"
    )
    return "\n".join(lines)
