"""Simulator: plan a deployment (ranked layouts) and see latency against concurrency."""

from __future__ import annotations

from typing import Any

from appliance.ui.pages import Page, PageRequest


async def simulator(req: PageRequest) -> dict[str, Any]:
    """The form's choices come from the simulator's catalogues."""
    try:
        from appliance.sim.catalog import known_models
        from appliance.sim.hardware import default_catalog
    except ImportError:  # pragma: no cover - simulator not built in
        return {"available": False, "models": [], "gpus": []}
    catalog = default_catalog()
    return {"available": True, "models": known_models(), "gpus": catalog.ids()}



PAGES = (Page("/simulator", "Simulator", "simulator.html", simulator, section="Plan",
              summary="Predict latency and cost before touching hardware."),)
