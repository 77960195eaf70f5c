"""`appliance sim calibrate`: fold this site's measurements into the simulator's regressor."""

from __future__ import annotations

import argparse
import datetime
import hashlib
import sys
from pathlib import Path
from typing import Any

import msgspec

from appliance.cli.common import add_common, print_json, run_with_store, settings_from
from appliance.kernel.errors import ConfigError
from appliance.settings import Settings
from appliance.sim import SimInputError
from appliance.sim.calibration import Calibration, GpuAccuracy
from appliance.store.state import StateStore

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2

EPILOG = """\
FILE is CSV with a header: gpu, engine, model, input_tokens, output_tokens, batch, and
e2e_s (the whole static batch, seconds) and/or ttft_s (its first token, seconds); tp, pp
and dtype are optional (1, 1, bf16). Example:

  gpu,engine,model,tp,input_tokens,output_tokens,batch,e2e_s,ttft_s
  h100-sxm,vllm,meta-llama/Meta-Llama-3-8B,1,1024,256,16,3.42,0.41

The site's rows replace the shipped measurements of the GPU types they cover; predictions
made with this data directory (CLI, API, console) use the result until --reset.
"""


def register(cmds: Any) -> None:
    """Add ``sim calibrate`` to the ``sim`` sub-parsers."""
    c = cmds.add_parser(
        "calibrate",
        help="train the regressor on this site's own measurements",
        description="Retrain the simulator's regressor with this site's measurements.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    c.add_argument("file", nargs="?", type=Path, metavar="FILE", help="measurements CSV")
    what = c.add_mutually_exclusive_group()
    what.add_argument("--show", action="store_true", help="show the installed calibration")
    what.add_argument("--reset", action="store_true", help="go back to the shipped regressor")
    add_common(c)
    c.set_defaults(func=run_calibrate)


def run_calibrate(args: argparse.Namespace) -> int:
    """Run ``appliance sim calibrate``."""
    from appliance.sim import calibration

    if (args.file is None) == (not (args.show or args.reset)):
        print("appliance sim calibrate: give FILE, --show or --reset", file=sys.stderr)
        return EXIT_USAGE
    try:
        settings = settings_from(args)
    except ConfigError as exc:
        print(f"appliance sim calibrate: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    data_dir = settings.data_path
    if args.show:
        loaded = calibration.load(data_dir)
        report = loaded[1] if loaded else None
        _print(report, args.json)
        return EXIT_OK
    if args.reset:
        removed = calibration.reset(data_dir)
        if removed:
            _audit(args, "sim.calibration.reset", {})
        if args.json:
            print_json({"active": False, "removed": removed})
        else:
            print("back to the shipped regressor" if removed else "no site calibration installed")
        return EXIT_OK
    try:
        raw = args.file.read_bytes()
        rows = calibration.parse_csv(raw.decode("utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        print(f"appliance sim calibrate: cannot read {args.file}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except SimInputError as exc:
        print(f"appliance sim calibrate: {args.file}: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    corr, report = calibration.calibrate(rows, source=raw, nthread=2)
    path = calibration.save(data_dir, corr, report)
    _audit(args, "sim.calibrate", {"rows": report.site_rows, "gpus": report.gpus,
                                   "sha256": hashlib.sha256(raw).hexdigest(),
                                   "file": str(args.file)})
    if not args.json:
        print(f"installed {path}")
    _print(report, args.json)
    return EXIT_OK


def _audit(args: argparse.Namespace, action: str, detail: dict[str, Any]) -> None:
    from appliance.identity import audit

    async def write(store: StateStore, _settings: Settings) -> int:
        await audit.write(store, actor=audit.cli_actor(), action=action,
                          target="sim/corrector-site", detail=detail)
        return EXIT_OK

    run_with_store(args, write)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}%"


def _print(report: Calibration | None, as_json: bool) -> None:
    if as_json:
        print_json({"active": report is not None,
                    "calibration": msgspec.to_builtins(report) if report else None})
        return
    if report is None:
        print("no site calibration installed: predictions use the shipped regressor")
        return
    when = datetime.datetime.fromtimestamp(report.calibrated_at).isoformat(timespec="seconds")
    print(f"site calibration of {when}: {report.site_rows} site rows "
          f"({', '.join(report.gpus)}), {report.trained_rows} rows trained on")
    print("MdAPE on the site's rows (calibrated is in-sample):")
    head = ("GPU", "e2e rows", "heuristic", "shipped", "calibrated",
            "TTFT rows", "heuristic", "shipped", "calibrated")
    body = [_row(a) for a in report.accuracy]
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    for r in [head, *body]:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


def _row(a: GpuAccuracy) -> tuple[str, ...]:
    return (a.gpu, str(a.e2e_rows), _pct(a.e2e_heuristic), _pct(a.e2e_shipped),
            _pct(a.e2e_calibrated), str(a.ttft_rows), _pct(a.ttft_heuristic),
            _pct(a.ttft_shipped), _pct(a.ttft_calibrated))
