"""Per-key request and token rate limits (token buckets) with OpenAI's x-ratelimit headers."""

from __future__ import annotations

import math
import time

from appliance.kernel.errors import RateLimited


class _Bucket:
    __slots__ = ("capacity", "level", "rate", "stamp")

    def __init__(self, per_minute: int) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.level = float(per_minute)
        self.stamp = time.monotonic()

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def seconds_until(self, amount: float) -> float:
        return max(0.0, (amount - self.level) / self.rate)


class KeyLimits:
    """The request and token buckets of one key."""

    __slots__ = ("requests", "tokens")

    def __init__(self, rpm: int | None, tpm: int | None) -> None:
        self.requests = _Bucket(rpm) if rpm else None
        self.tokens = _Bucket(tpm) if tpm else None


class RateLimiter:
    """Admits requests per key and charges tokens after they are known."""

    def __init__(self) -> None:
        self._keys: dict[str, tuple[int | None, int | None, KeyLimits]] = {}

    def _limits(self, key_id: str, rpm: int | None, tpm: int | None) -> KeyLimits:
        entry = self._keys.get(key_id)
        if entry is None or entry[0] != rpm or entry[1] != tpm:
            entry = (rpm, tpm, KeyLimits(rpm, tpm))
            self._keys[key_id] = entry
        return entry[2]

    def admit(self, key_id: str, rpm: int | None, tpm: int | None) -> dict[str, str]:
        """Take one request from the key's budget or raise RateLimited; return the headers."""
        if not rpm and not tpm:
            return {}
        limits = self._limits(key_id, rpm, tpm)
        now = time.monotonic()
        headers: dict[str, str] = {}
        if limits.tokens is not None:
            limits.tokens.refill(now)
            if limits.tokens.level < 1:
                wait = limits.tokens.seconds_until(1)
                raise RateLimited(
                    f"Rate limit reached for tokens per minute (limit {tpm}). "
                    f"Please try again in {wait:.1f}s.", retry_after=wait, code="tokens")
        if limits.requests is not None:
            limits.requests.refill(now)
            if limits.requests.level < 1:
                wait = limits.requests.seconds_until(1)
                raise RateLimited(
                    f"Rate limit reached for requests per minute (limit {rpm}). "
                    f"Please try again in {wait:.1f}s.", retry_after=wait, code="requests")
            limits.requests.level -= 1
            headers["x-ratelimit-limit-requests"] = str(rpm)
            headers["x-ratelimit-remaining-requests"] = str(int(limits.requests.level))
            headers["x-ratelimit-reset-requests"] = _fmt(limits.requests.seconds_until(
                limits.requests.capacity))
        if limits.tokens is not None:
            headers["x-ratelimit-limit-tokens"] = str(tpm)
            headers["x-ratelimit-remaining-tokens"] = str(int(limits.tokens.level))
            headers["x-ratelimit-reset-tokens"] = _fmt(limits.tokens.seconds_until(
                limits.tokens.capacity))
        return headers

    def charge(self, key_id: str, tokens: int) -> None:
        """Debit tokens used by a finished request (may go negative: later requests wait)."""
        entry = self._keys.get(key_id)
        if entry is not None and entry[2].tokens is not None:
            bucket = entry[2].tokens
            bucket.refill(time.monotonic())
            bucket.level -= tokens


def _fmt(seconds: float) -> str:
    if seconds < 1:
        return f"{max(1, math.ceil(seconds * 1000))}ms"
    return f"{seconds:.1f}s" if seconds < 60 else f"{int(seconds // 60)}m{int(seconds % 60)}s"
