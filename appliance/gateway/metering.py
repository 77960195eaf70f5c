"""Usage metering: in-memory Prometheus counters plus a hand-off to the DuckDB writer."""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Callable, Iterable

from appliance.store.metrics import MetricsWriter, RequestRecord

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class _Histogram:
    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(LATENCY_BUCKETS, value)] += 1
        self.sum += value


class Meter:
    """Counts every finished request; ``exposition`` renders Prometheus text format 0.0.4."""

    def __init__(self, writer: MetricsWriter | None) -> None:
        self.writer = writer
        self.requests: defaultdict[tuple[str, str, str], int] = defaultdict(int)
        self.tokens: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.latency: defaultdict[str, _Histogram] = defaultdict(_Histogram)
        self.ttft: defaultdict[str, _Histogram] = defaultdict(_Histogram)
        self.in_flight = 0
        self.gauges: list[Callable[[], Iterable[str]]] = []

    def observe(self, rec: RequestRecord) -> None:
        """Record one finished request (called once per request, never blocks)."""
        self.requests[(rec.model, rec.endpoint, str(rec.status))] += 1
        if rec.prompt_tokens:
            self.tokens[(rec.model, "prompt")] += rec.prompt_tokens
        if rec.completion_tokens:
            self.tokens[(rec.model, "completion")] += rec.completion_tokens
        self.latency[rec.model].observe(rec.latency_ms / 1000)
        if rec.ttft_ms is not None:
            self.ttft[rec.model].observe(rec.ttft_ms / 1000)
        if self.writer is not None:
            self.writer.record(rec)

    def exposition(self) -> str:
        out: list[str] = [
            "# HELP appliance_requests_total Requests answered by the gateway.",
            "# TYPE appliance_requests_total counter",
        ]
        for (model, endpoint, status), n in sorted(self.requests.items()):
            out.append(f'appliance_requests_total{{model="{_esc(model)}",endpoint="{endpoint}",'
                       f'status="{status}"}} {n}')
        out += ["# HELP appliance_tokens_total Tokens processed, by type.",
                "# TYPE appliance_tokens_total counter"]
        for (model, kind), n in sorted(self.tokens.items()):
            out.append(f'appliance_tokens_total{{model="{_esc(model)}",type="{kind}"}} {n}')
        for name, help_text, hists in (
            ("appliance_request_duration_seconds", "Time from request to last byte.",
             self.latency),
            ("appliance_time_to_first_token_seconds", "Time to the first streamed byte.",
             self.ttft),
        ):
            out += [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
            for model, hist in sorted(hists.items()):
                label = f'model="{_esc(model)}"'
                cumulative = 0
                for bound, count in zip(LATENCY_BUCKETS, hist.counts, strict=False):
                    cumulative += count
                    out.append(f'{name}_bucket{{{label},le="{bound}"}} {cumulative}')
                cumulative += hist.counts[-1]
                out.append(f'{name}_bucket{{{label},le="+Inf"}} {cumulative}')
                out.append(f"{name}_sum{{{label}}} {hist.sum:.6f}")
                out.append(f"{name}_count{{{label}}} {cumulative}")
        out += ["# HELP appliance_requests_in_flight Requests being answered now.",
                "# TYPE appliance_requests_in_flight gauge",
                f"appliance_requests_in_flight {self.in_flight}"]
        for gauge in self.gauges:
            out.extend(gauge())
        return "\n".join(out) + "\n"


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
