"""Train the simulator's XGBoost corrector and write it as a versioned artefact.

Usage: python build/train_sim.py [DATA_DIR] [--out DIR] [--nthread N]

DATA_DIR holds the LLM-Inference-Bench CSVs (default: appliance/sim/data, a copy of
../shared/data/sim). Takes a few seconds on one core.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from appliance.sim.hardware import default_catalog
from appliance.sim.measurements import DATA_DIR, load_measurements, trainable
from appliance.sim.training import fit_corrector, save_corrector, to_samples


def main(argv: list[str] | None = None) -> int:
    """Train on every usable measurement and save the artefact."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", type=Path, default=DATA_DIR)
    parser.add_argument("--out", type=Path, default=DATA_DIR)
    parser.add_argument("--nthread", type=int, default=2)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    rows = trainable(load_measurements(args.data))
    if not rows:
        print(f"no measurements found under {args.data}", file=sys.stderr)
        return 1
    samples = to_samples(rows, default_catalog())
    corr = fit_corrector(samples, nthread=args.nthread)
    paths = save_corrector(corr, args.out)
    print(
        f"trained corrector {corr.meta.version} on {corr.meta.train_rows} e2e and "
        f"{corr.meta.ttft_rows} TTFT measurements in {time.perf_counter() - start:.1f} s"
    )
    for p in paths.values():
        print(f"  wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
