"""Project and key limits on the inference path, all in memory (no database write per request).

Token counters per UTC day and month are seeded once from the metrics database at start-up
and advanced as requests finish; the project table is re-read whenever the state changes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from appliance.gateway.keys import ApiKey
from appliance.gateway.limits import _Bucket
from appliance.identity.projects import Project
from appliance.kernel.errors import Forbidden, NotFound, RateLimited


def _periods(now: float) -> tuple[str, str]:
    day = time.strftime("%Y-%m-%d", time.gmtime(now))
    return day, day[:7]


def _seconds_to_next_day(now: float) -> float:
    return 86400 - now % 86400


class _Counter:
    """Tokens used in the current day and month by one project or key."""

    __slots__ = ("day", "day_tokens", "month", "month_tokens")

    def __init__(self) -> None:
        self.day = self.month = ""
        self.day_tokens = self.month_tokens = 0

    def roll(self, now: float) -> None:
        day, month = _periods(now)
        if day != self.day:
            self.day, self.day_tokens = day, 0
        if month != self.month:
            self.month, self.month_tokens = month, 0


class QuotaGate:
    """Admits a request for a key (project allow-list, address, quotas) and charges tokens."""

    def __init__(self, *, now: Callable[[], float] = time.time) -> None:
        self.now = now
        self.projects: dict[str, Project] = {}
        self._used: dict[str, _Counter] = {}  # "p:<project>" / "k:<key>"
        self._in_flight: dict[str, int] = {}
        self._rpm: dict[str, tuple[int, _Bucket]] = {}

    def load(self, projects: Iterable[Project]) -> None:
        """Take the current project table (after any state change)."""
        self.projects = {p.id: p for p in projects}

    def seed(self, rows: Iterable[tuple[str, str, str, int]]) -> None:
        """Counters from metrics: rows of (kind 'p'|'k', id, 'day'|'month', tokens)."""
        now = self.now()
        for kind, ident, period, tokens in rows:
            counter = self._counter(f"{kind}:{ident}", now)
            if period == "day":
                counter.day_tokens += int(tokens)
            else:
                counter.month_tokens += int(tokens)

    def _counter(self, name: str, now: float) -> _Counter:
        counter = self._used.get(name)
        if counter is None:
            counter = self._used[name] = _Counter()
        counter.roll(now)
        return counter

    def check_model(self, key: ApiKey, model: str) -> None:
        """A model outside the key's project allow-list answers like a model that isn't there."""
        project = self.projects.get(key.project_id)
        if project is not None and not project.allows_model(model):
            raise NotFound(f"The model `{model}` does not exist or you do not have access to "
                           "it.", param="model", code="model_not_found")

    def visible(self, key: ApiKey, model: str) -> bool:
        project = self.projects.get(key.project_id)
        return project is None or project.allows_model(model)

    def _budget(self, name: str, counter: _Counter, day_limit: int | None,
                month_limit: int | None, now: float) -> None:
        if day_limit is not None and counter.day_tokens >= day_limit:
            raise RateLimited(f"The {name} has used its {day_limit} tokens for today (UTC).",
                              retry_after=_seconds_to_next_day(now), code="quota_exceeded")
        if month_limit is not None and counter.month_tokens >= month_limit:
            raise RateLimited(f"The {name} has used its {month_limit} tokens for this month.",
                              retry_after=_seconds_to_next_day(now), code="quota_exceeded")

    def admit(self, key: ApiKey, address: str | None) -> None:
        """Check address, budgets, project RPM and concurrency; take one in-flight slot.

        Every successful ``admit`` must be paired with ``release``.
        """
        if not key.allows_address(address):
            raise Forbidden(f"API key {key.id} may not be used from {address}.",
                            code="address_not_allowed")
        now = self.now()
        self._budget("API key", self._counter(f"k:{key.id}", now), key.tokens_per_day,
                     key.tokens_per_month, now)
        project = self.projects.get(key.project_id)
        if project is None:
            self._in_flight[key.project_id] = self._in_flight.get(key.project_id, 0) + 1
            return
        self._budget(f"project {project.id}", self._counter(f"p:{project.id}", now),
                     project.tokens_per_day, project.tokens_per_month, now)
        busy = self._in_flight.get(project.id, 0)
        if project.max_concurrent is not None and busy >= project.max_concurrent:
            raise RateLimited(f"Project {project.id} has {busy} requests in flight (limit "
                              f"{project.max_concurrent}).", retry_after=1.0,
                              code="concurrency_exceeded")
        if project.rpm:
            entry = self._rpm.get(project.id)
            if entry is None or entry[0] != project.rpm:
                entry = self._rpm[project.id] = (project.rpm, _Bucket(project.rpm))
            bucket = entry[1]
            bucket.refill(time.monotonic())
            if bucket.level < 1:
                wait = bucket.seconds_until(1)
                raise RateLimited(f"Project {project.id} reached its {project.rpm} requests "
                                  f"per minute. Please try again in {wait:.1f}s.",
                                  retry_after=wait, code="requests")
            bucket.level -= 1
        self._in_flight[project.id] = busy + 1

    def release(self, key: ApiKey, tokens: int) -> None:
        """The request finished: free its slot and charge its tokens."""
        left = self._in_flight.get(key.project_id, 1) - 1
        if left > 0:
            self._in_flight[key.project_id] = left
        else:
            self._in_flight.pop(key.project_id, None)
        if tokens:
            now = self.now()
            for name in (f"k:{key.id}", f"p:{key.project_id}"):
                counter = self._counter(name, now)
                counter.day_tokens += tokens
                counter.month_tokens += tokens

    def in_flight(self, project_id: str) -> int:
        return self._in_flight.get(project_id, 0)


def seed_query(now: float) -> Callable[[Any], list[tuple[str, str, str, int]]]:
    """A function for the metrics writer thread: tokens per project and key, today and this
    month (UTC)."""
    day_start = now - now % 86400
    t = time.gmtime(now)
    month_start = time.mktime((t.tm_year, t.tm_mon, 1, 0, 0, 0, 0, 0, 0)) - time.timezone

    def run(conn: Any) -> list[tuple[str, str, str, int]]:
        out: list[tuple[str, str, str, int]] = []
        for column, kind in (("project_id", "p"), ("key_id", "k")):
            for period, start in (("day", day_start), ("month", month_start)):
                rows = conn.execute(
                    f"SELECT {column}, sum(prompt_tokens + completion_tokens) FROM requests "
                    f"WHERE ts >= to_timestamp(?) AND {column} != '' GROUP BY {column}",
                    [start]).fetchall()
                out += [(kind, r[0], period, int(r[1] or 0)) for r in rows]
        return out
    return run
