"""Usage: requests, tokens, errors and latency per project, key, model, route or target."""

from __future__ import annotations

import asyncio
import csv
import io
from typing import Any

from aiohttp import web

from appliance.gateway.keys import list_keys
from appliance.telemetry.usage import GROUPS, UsageReport, parse_window, usage_query
from appliance.ui.pages import CONSOLE, Page, PageRequest
from appliance.ui.proxy import operator_for_call

WINDOWS = ("1h", "1d", "7d", "30d")
COLUMNS = ("requests", "errors", "prompt_tokens", "completion_tokens", "ttft_ms_p50",
           "ttft_ms_p95", "ttft_ms_p99", "latency_ms_p50", "latency_ms_p95", "latency_ms_p99")


def _choices(query: Any) -> tuple[str, str]:
    window = query.get("window", "1d")
    group = query.get("group_by", "model")
    return (window if window in WINDOWS else "1d", group if group in GROUPS else "model")


async def _report(services: Any, window: str, group: str) -> tuple[UsageReport, dict[str, str]]:
    report: UsageReport = await asyncio.wrap_future(
        services.metrics.query(usage_query(parse_window(window), group)))
    names = {}
    if group == "key":
        names = {k.id: k.name for k in await list_keys(services.store, include_revoked=True)}
    return report, names


async def usage(req: PageRequest) -> dict[str, Any]:
    """One table per grouping; the CSV link exports what is shown."""
    window, group = _choices(req.query)
    report, names = await _report(req.services, window, group)
    return {"window": window, "windows": WINDOWS, "group": group, "groups": list(GROUPS),
            "rows": report.rows, "names": names,
            "total_requests": sum(r.requests for r in report.rows),
            "total_tokens": sum(r.prompt_tokens + r.completion_tokens for r in report.rows)}


async def usage_csv(request: web.Request) -> web.StreamResponse:
    """The usage table as CSV (same window and grouping as the page)."""
    operator = await operator_for_call(request)
    if isinstance(operator, web.Response):
        return operator
    window, group = _choices(request.query)
    report, names = await _report(request.app[CONSOLE].services, window, group)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow([group, *(["key_name"] if group == "key" else []), *COLUMNS])
    for row in report.rows:
        writer.writerow([row.group, *([names.get(row.group, "")] if group == "key" else []),
                         *(getattr(row, c) if getattr(row, c) is not None else ""
                           for c in COLUMNS)])
    return web.Response(text=out.getvalue(), content_type="text/csv", charset="utf-8",
                        headers={"Content-Disposition":
                                 f'attachment; filename="usage-{group}-{window}.csv"',
                                 "Cache-Control": "no-store"})


PAGES = (Page("/usage", "Usage", "usage.html", usage, section="Monitor",
              summary="Requests, tokens and latency per project, key and model."),)
ROUTES = (("GET", "/ui/usage.csv", usage_csv),)
