"""Overview: health of engines and upstreams, traffic, latency, top models and keys."""

from __future__ import annotations

from typing import Any

from appliance.ui.events import overview_snapshot
from appliance.ui.pages import Page, PageRequest
from appliance.ui.series import WINDOWS


async def overview(req: PageRequest) -> dict[str, Any]:
    """The first snapshot is rendered in the page; /ui/events keeps it live."""
    window = req.query.get("window", "1h")
    if window not in WINDOWS:
        window = "1h"
    return {"window": window, "windows": list(WINDOWS),
            "snapshot": await overview_snapshot(req.state, window)}


PAGES = (Page("/", "Overview", "overview.html", overview, section="Monitor",
              summary="Health and traffic of this appliance, live."),)
