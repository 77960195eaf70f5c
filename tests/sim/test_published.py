"""The external validation set (bench/data/sim_published.csv) stays usable by the bench."""

from __future__ import annotations

import csv
import importlib.util
import math
from pathlib import Path

from appliance.sim import default_catalog, lookup_model
from appliance.sim.hardware import DTYPES
from appliance.sim.service import default_simulator
from appliance.sim.structs import ENGINES

ROOT = Path(__file__).resolve().parents[2]
CSV = ROOT / "bench" / "data" / "sim_published.csv"


def _bench():
    spec = importlib.util.spec_from_file_location(
        "sim_accuracy", ROOT / "bench" / "sim_accuracy.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_row_names_known_parts_and_a_source() -> None:
    with CSV.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) > 100
    catalog = default_catalog()
    for r in rows:
        assert r["source_url"].startswith("https://"), r
        catalog.get(r["gpu"])
        lookup_model(r["model"])
        assert r["engine"] in ENGINES and r["dtype"] in DTYPES, r
        assert float(r["value"]) > 0, r


def test_bench_scores_both_methods_on_static_rows() -> None:
    errors = _bench().published(CSV, default_simulator())
    for method in ("heuristic", "regressor"):
        for metric in ("output_tokens_per_s", "e2e_s", "ttft_ms"):
            errs = errors[(method, metric)]
            assert errs and all(math.isfinite(e) for e in errs)
