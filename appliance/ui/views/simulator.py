"""Simulator: plan a deployment (ranked layouts) and see latency against concurrency."""

from __future__ import annotations

import asyncio
from typing import Any

from appliance.ui.pages import Page, PageRequest, can


async def simulator(req: PageRequest) -> dict[str, Any]:
    """The form's choices come from the simulator's catalogues; the calibration panel shows
    which regressor answers (shipped or this site's) and how each fits the site's rows."""
    try:
        from appliance.sim.catalog import known_models
        from appliance.sim.hardware import default_catalog
        from appliance.sim.service import simulator_for
    except ImportError:  # pragma: no cover - simulator not built in
        return {"available": False, "models": [], "gpus": []}
    catalog = default_catalog()
    sim = await asyncio.to_thread(simulator_for, req.services.data_dir)
    meta = sim.corrector.meta if sim.corrector is not None else None
    return {
        "available": True,
        "models": known_models(),
        "gpus": catalog.ids(),
        "calibration": sim.calibration,
        "artefact": meta.version if meta else None,
        "trained_rows": meta.train_rows + meta.ttft_rows if meta else 0,
        "can_calibrate": can(req.operator, "sim.calibrate"),
    }


PAGES = (Page("/simulator", "Simulator", "simulator.html", simulator, section="Plan",
              summary="Predict latency and cost before touching hardware."),)
