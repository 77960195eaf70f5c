"""Site calibration: fold this site's own measurements into the regressor.

A site benchmarks its engines (``vllm bench latency``, ``trtllm-bench``, its own scripts) and
hands the results over as CSV (``appliance sim calibrate FILE`` or ``POST
/api/sim/calibration``). The corrector is retrained on the shipped measurements plus the
site's, where the site's rows replace the shipped rows of the GPU types (and metric) they
cover: they describe this site's software, which is what its plans will run on. The result is
one file, ``<data dir>/sim/corrector-site.json``, replaced atomically; while it exists every
prediction made with that data directory uses it.

CSV columns (header row required, order free): ``gpu, engine, model, input_tokens,
output_tokens, batch`` and at least one of ``e2e_s`` (the whole static batch, seconds) and
``ttft_s`` (the batch's first token, seconds); optional ``tp`` and ``pp`` (default 1) and
``dtype`` (default bf16). ``model`` is a catalog name or Hugging Face id.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import os
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from appliance.sim.catalog import lookup_model
from appliance.sim.errors import SimInputError
from appliance.sim.hardware import DTYPES, GpuCatalog, default_catalog
from appliance.sim.heuristic import Latency
from appliance.sim.measurements import Measurement, load_measurements, trainable
from appliance.sim.regressor import Corrector, CorrectorMeta, apply_correction, load_corrector
from appliance.sim.structs import ENGINES, Workload
from appliance.sim.training import Sample, fit_corrector, to_samples

SITE_FILE = Path("sim") / "corrector-site.json"
REQUIRED = ("gpu", "engine", "model", "input_tokens", "output_tokens", "batch")
OPTIONAL = ("tp", "pp", "dtype", "e2e_s", "ttft_s")
MAX_ROWS = 20_000
MAX_BYTES = 8 << 20
MAX_GPUS, MAX_TOKENS, MAX_BATCH = 4096, 1 << 20, 1 << 16


class GpuAccuracy(msgspec.Struct, frozen=True):
    """MdAPE on one GPU type's site rows (in-sample for ``calibrated``), percent."""

    gpu: str
    e2e_rows: int
    ttft_rows: int
    e2e_heuristic: float | None
    e2e_shipped: float | None
    e2e_calibrated: float | None
    ttft_heuristic: float | None
    ttft_shipped: float | None
    ttft_calibrated: float | None


class Calibration(msgspec.Struct, frozen=True):
    """What the site artefact was trained on and how it fits the site's rows."""

    site_rows: int
    gpus: list[str]
    trained_rows: int
    calibrated_at: float
    source_sha256: str
    accuracy: list[GpuAccuracy]


class _SiteFile(msgspec.Struct, frozen=True):
    meta: CorrectorMeta
    calibration: Calibration
    e2e: str
    ttft: str


def site_path(data_dir: Path) -> Path:
    """Where the site artefact of ``data_dir`` lives."""
    return data_dir / SITE_FILE


def parse_csv(text: str, catalog: GpuCatalog | None = None) -> list[Measurement]:
    """Site measurements from CSV text; ``SimInputError`` names the first bad line."""
    if len(text.encode()) > MAX_BYTES:
        raise SimInputError(f"measurements file is over {MAX_BYTES >> 20} MiB")
    catalog = catalog or default_catalog()
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
    header = [h.strip() for h in reader.fieldnames or []]
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise SimInputError(
            f"the header lacks {', '.join(missing)}; columns are {', '.join(REQUIRED)}, "
            f"e2e_s and/or ttft_s, and optionally tp, pp, dtype"
        )
    if "e2e_s" not in header and "ttft_s" not in header:
        raise SimInputError("the header needs e2e_s or ttft_s (seconds)")
    unknown = [c for c in header if c not in REQUIRED + OPTIONAL]
    if unknown:
        raise SimInputError(f"unknown column(s) {', '.join(unknown)}")
    rows: list[Measurement] = []
    for raw in reader:
        line = reader.line_num
        if len(rows) >= MAX_ROWS:
            raise SimInputError(f"more than {MAX_ROWS} rows")
        row = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
        if not any(row.values()):
            continue
        try:
            rows.append(_measurement(row, catalog))
        except SimInputError as exc:
            raise SimInputError(f"line {line}: {exc.message}") from None
    if not rows:
        raise SimInputError("no measurements in the file")
    return rows


def _positive(
    row: dict[str, str], key: str, kind: type, default: Any = None, most: float = math.inf
) -> Any:
    text = row.get(key, "")
    if not text:
        if default is None:
            raise SimInputError(f"{key} is empty")
        return default
    try:
        value = kind(text)
    except ValueError:
        raise SimInputError(f"{key}={text!r} is not a number") from None
    if not (value > 0 and math.isfinite(value)):
        raise SimInputError(f"{key} must be positive, not {text}")
    if value > most:
        raise SimInputError(f"{key}={text} is over the most the simulator takes ({most:g})")
    return value


def _measurement(row: dict[str, str], catalog: GpuCatalog) -> Measurement:
    gpu = catalog.get(row["gpu"]).id
    engine = row["engine"].lower()
    if engine not in ENGINES:
        raise SimInputError(f"unknown engine {row['engine']!r}; use one of {', '.join(ENGINES)}")
    dtype = (row.get("dtype") or "bf16").lower()
    if dtype not in DTYPES:
        raise SimInputError(f"unknown dtype {row['dtype']!r}; use one of {', '.join(DTYPES)}")
    lookup_model(row["model"])
    e2e = _positive(row, "e2e_s", float, 0.0) or None
    ttft = _positive(row, "ttft_s", float, 0.0) or None
    if e2e is None and ttft is None:
        raise SimInputError("needs e2e_s or ttft_s")
    return Measurement(
        gpu=gpu,
        engine=engine,
        model=row["model"],
        tp=_positive(row, "tp", int, 1, most=MAX_GPUS),
        pp=_positive(row, "pp", int, 1, most=MAX_GPUS),
        input_tokens=_positive(row, "input_tokens", int, most=MAX_TOKENS),
        output_tokens=_positive(row, "output_tokens", int, most=MAX_TOKENS),
        batch=_positive(row, "batch", int, most=MAX_BATCH),
        e2e_s=e2e,
        ttft_s=ttft,
        source="site",
        dtype=dtype,
    )


def merge(shipped: Sequence[Measurement], site: Sequence[Measurement]) -> list[Measurement]:
    """Training rows: site rows replace the shipped rows of each (GPU type, metric) they cover."""
    e2e_gpus = {m.gpu for m in site if m.e2e_s}
    ttft_gpus = {m.gpu for m in site if m.ttft_s}
    kept = [
        m
        for m in trainable(list(shipped))
        if not (m.e2e_s and m.gpu in e2e_gpus) and not (m.ttft_s and m.gpu in ttft_gpus)
    ]
    return kept + list(site)


def _mdape(pairs: list[tuple[float, float]]) -> float | None:
    if not pairs:
        return None
    return round(statistics.median(abs(p - t) / t for p, t in pairs) * 100, 1)


def _accuracy(
    samples: Sequence[Sample], shipped: Corrector | None, site: Corrector
) -> list[GpuAccuracy]:
    """MdAPE per GPU type of the heuristic, the shipped and the site corrector."""
    out = []
    for gpu in sorted({s.m.gpu for s in samples}):
        mine = [s for s in samples if s.m.gpu == gpu]
        preds: dict[str, list[Latency] | None] = {
            "heuristic": [s.lat for s in mine],
            "shipped": _corrected(mine, shipped),
            "calibrated": _corrected(mine, site),
        }
        cells: dict[str, float | None] = {}
        for name, lats in preds.items():
            pairs = list(zip(mine, lats or [], strict=False))
            cells[f"e2e_{name}"] = _mdape([(lat.e2e_s, s.m.e2e_s) for s, lat in pairs if s.m.e2e_s])
            cells[f"ttft_{name}"] = _mdape(
                [(lat.ttft_s, s.m.ttft_s) for s, lat in pairs if s.m.ttft_s]
            )
        out.append(
            GpuAccuracy(
                gpu=gpu,
                e2e_rows=sum(1 for s in mine if s.m.e2e_s),
                ttft_rows=sum(1 for s in mine if s.m.ttft_s),
                **cells,
            )
        )
    return out


def _corrected(samples: Sequence[Sample], corr: Corrector | None) -> list[Latency] | None:
    if corr is None:
        return None
    factors = corr.log_factors([s.features for s in samples], [s.m.gpu for s in samples])
    return [
        apply_correction(s.lat, Workload(s.m.input_tokens, s.m.output_tokens, s.m.batch), ft, fe)
        for s, (ft, fe) in zip(samples, factors, strict=True)
    ]


def calibrate(
    site: Sequence[Measurement], *, source: bytes = b"", nthread: int = 1
) -> tuple[Corrector, Calibration]:
    """Train the site corrector and measure how both artefacts fit the site's rows."""
    catalog = default_catalog()
    rows = merge(load_measurements(), site)
    if not any(m.e2e_s for m in rows) or not any(m.ttft_s for m in rows):
        raise SimInputError("training needs rows with e2e_s and rows with ttft_s")
    corr = fit_corrector(to_samples(rows, catalog), nthread=nthread)
    corr = corr.with_meta(msgspec.structs.replace(corr.meta, version=corr.meta.version + "+site"))
    report = Calibration(
        site_rows=len(site),
        gpus=sorted({m.gpu for m in site}),
        trained_rows=len(rows),
        calibrated_at=time.time(),
        source_sha256=hashlib.sha256(source).hexdigest(),
        accuracy=_accuracy(to_samples(list(site), catalog), load_corrector(), corr),
    )
    return corr, report


def save(data_dir: Path, corr: Corrector, report: Calibration) -> Path:
    """Install the site artefact (write a temporary file, then rename over the old one)."""
    path = site_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    e2e, ttft = corr.dump()
    doc = _SiteFile(meta=corr.meta, calibration=report, e2e=e2e, ttft=ttft)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    with tmp.open("wb") as f:
        f.write(msgspec.json.encode(doc))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def load(data_dir: Path) -> tuple[Corrector, Calibration] | None:
    """The installed site artefact, or None (missing, unreadable or xgboost absent)."""
    try:
        doc = msgspec.json.decode(site_path(data_dir).read_bytes(), type=_SiteFile)
        return Corrector.from_dump(doc.e2e, doc.ttft, doc.meta), doc.calibration
    except (OSError, msgspec.DecodeError, msgspec.ValidationError, ImportError):
        return None


def reset(data_dir: Path) -> bool:
    """Remove the site artefact; True when there was one."""
    try:
        site_path(data_dir).unlink()
    except FileNotFoundError:
        return False
    return True
