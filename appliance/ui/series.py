"""Time series and top lists for the overview, computed in the metrics writer's thread."""

from __future__ import annotations

import math
import time
from typing import Any

import duckdb

from appliance.kernel.errors import BadRequest

# window → (seconds, bucket seconds)
WINDOWS = {"1h": (3600, 60), "1d": (86400, 900)}
QUANTILES = "[0.5, 0.95, 0.99]"


def window_of(text: str) -> tuple[str, int, int]:
    """The overview's window name, its length and its bucket size in seconds."""
    if text not in WINDOWS:
        raise BadRequest(f"window must be one of {', '.join(WINDOWS)}", param="window")
    seconds, bucket = WINDOWS[text]
    return text, seconds, bucket


def overview_query(window_s: int, bucket_s: int, *, now: float | None = None) -> Any:
    """A function for the metrics writer thread returning the overview's numbers."""
    end = math.floor((now if now is not None else time.time()) / bucket_s) * bucket_s + bucket_s
    start = end - window_s

    def run(conn: duckdb.DuckDBPyConnection) -> dict[str, Any]:
        rows = conn.execute(f"""
            SELECT floor(epoch(ts) / ?) * ? AS t, count(*),
                   count(*) FILTER (WHERE status >= 400),
                   coalesce(sum(completion_tokens), 0), coalesce(sum(prompt_tokens), 0),
                   quantile_cont(ttft_ms, {QUANTILES}), quantile_cont(latency_ms, {QUANTILES})
            FROM requests WHERE ts >= to_timestamp(?) GROUP BY t ORDER BY t""",
            [bucket_s, bucket_s, start]).fetchall()
        by_t = {int(r[0]): r for r in rows}
        series: dict[str, list[Any]] = {k: [] for k in (
            "t", "rps", "tps", "error_rate", "ttft_p50", "ttft_p95", "ttft_p99",
            "latency_p50", "latency_p95", "latency_p99")}
        for t in range(start, end, bucket_s):
            r = by_t.get(t)
            series["t"].append(t)
            if r is None:
                for k in ("rps", "tps", "error_rate"):
                    series[k].append(0)
                for k in ("ttft_p50", "ttft_p95", "ttft_p99", "latency_p50", "latency_p95",
                          "latency_p99"):
                    series[k].append(None)
                continue
            count, errors, completion = r[1], r[2], int(r[3])
            ttft, latency = r[5] or [None] * 3, r[6] or [None] * 3
            series["rps"].append(round(count / bucket_s, 4))
            series["tps"].append(round(completion / bucket_s, 3))
            series["error_rate"].append(round(100 * errors / count, 2) if count else 0)
            for name, values in (("ttft", ttft), ("latency", latency)):
                for q, v in zip(("p50", "p95", "p99"), values, strict=True):
                    series[f"{name}_{q}"].append(None if v is None else round(v, 1))
        totals = conn.execute(f"""
            SELECT count(*), count(*) FILTER (WHERE status >= 400),
                   coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0),
                   quantile_cont(ttft_ms, {QUANTILES}), quantile_cont(latency_ms, {QUANTILES})
            FROM requests WHERE ts >= to_timestamp(?)""", [start]).fetchone()
        assert totals is not None
        recent = conn.execute(
            "SELECT count(*), coalesce(sum(completion_tokens), 0) FROM requests"
            " WHERE ts >= to_timestamp(?)", [time.time() - 60]).fetchone()
        assert recent is not None
        top = {}
        for column in ("model", "key_id"):
            top[column] = [
                {"name": r[0] or "(none)", "requests": r[1], "tokens": int(r[2]),
                 "errors": r[3]}
                for r in conn.execute(f"""
                    SELECT {column}, count(*),
                           coalesce(sum(prompt_tokens + completion_tokens), 0),
                           count(*) FILTER (WHERE status >= 400)
                    FROM requests WHERE ts >= to_timestamp(?)
                    GROUP BY {column} ORDER BY count(*) DESC LIMIT 5""", [start]).fetchall()]
        requests, errors = totals[0], totals[1]
        ttft, latency = totals[4] or [None] * 3, totals[5] or [None] * 3
        return {
            "window_s": window_s, "bucket_s": bucket_s, "series": series,
            "totals": {
                "requests": requests, "errors": errors,
                "error_rate": round(100 * errors / requests, 2) if requests else 0,
                "prompt_tokens": int(totals[2]), "completion_tokens": int(totals[3]),
                "rps_1m": round(recent[0] / 60, 3), "tps_1m": round(int(recent[1]) / 60, 2),
                "ttft_p50": ttft[0], "ttft_p95": ttft[1], "ttft_p99": ttft[2],
                "latency_p50": latency[0], "latency_p95": latency[1],
                "latency_p99": latency[2]},
            "top_models": top["model"], "top_keys": top["key_id"],
        }
    return run
