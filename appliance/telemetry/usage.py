"""Usage read-outs over the metrics database: requests, tokens, errors, TTFT and latency."""

from __future__ import annotations

from typing import Any

import duckdb
import msgspec

from appliance.kernel.errors import BadRequest

GROUPS = {"model": "model", "key": "key_id", "route": "route", "project": "project_id",
          "target": "target", "endpoint": "endpoint", "user": "user_id"}


class UsageRow(msgspec.Struct, kw_only=True):
    group: str
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    ttft_ms_p50: float | None
    ttft_ms_p95: float | None
    ttft_ms_p99: float | None
    latency_ms_p50: float | None
    latency_ms_p95: float | None
    latency_ms_p99: float | None


class UsageReport(msgspec.Struct, kw_only=True):
    window_s: int
    group_by: str
    rows: list[UsageRow]


def parse_window(text: str) -> int:
    """'15m', '1h', '7d' or plain seconds → seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        if text and text[-1] in units:
            return int(float(text[:-1]) * units[text[-1]])
        return int(text)
    except ValueError:
        raise BadRequest(f"window must look like 15m, 1h, 7d or seconds; got {text!r}",
                         param="window") from None


def usage_query(window_s: int, group_by: str) -> Any:
    """A function for the metrics writer thread computing the usage report."""
    if group_by not in GROUPS:
        raise BadRequest(f"group_by must be one of {', '.join(GROUPS)}", param="group_by")
    column = GROUPS[group_by]

    def run(conn: duckdb.DuckDBPyConnection) -> UsageReport:
        rows = conn.execute(f"""
            SELECT {column} AS grp, count(*), count(*) FILTER (WHERE status >= 400),
                   coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0),
                   quantile_cont(ttft_ms, 0.5), quantile_cont(ttft_ms, 0.95),
                   quantile_cont(ttft_ms, 0.99),
                   quantile_cont(latency_ms, 0.5), quantile_cont(latency_ms, 0.95),
                   quantile_cont(latency_ms, 0.99)
            FROM requests WHERE ts >= now() - to_seconds(?)
            GROUP BY grp ORDER BY count(*) DESC""", [window_s]).fetchall()
        return UsageReport(window_s=window_s, group_by=group_by, rows=[
            UsageRow(group=r[0] or "", requests=r[1], errors=r[2], prompt_tokens=int(r[3]),
                     completion_tokens=int(r[4]), ttft_ms_p50=r[5], ttft_ms_p95=r[6],
                     ttft_ms_p99=r[7], latency_ms_p50=r[8], latency_ms_p95=r[9],
                     latency_ms_p99=r[10]) for r in rows])
    return run
