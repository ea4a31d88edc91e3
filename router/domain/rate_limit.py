"""Token buckets: whether a caller may make a request now, and if not, when it may.

Pure: the caller passes `now`, so a test drives time by hand. One `RateLimiter` holds the
buckets of one kind of key (assets, integrations, CCSPs or client addresses), each with the
rate and burst the caller passes, read from the configuration at every request so that a
reload applies to the next one.

Keys from the configuration are few; client addresses are not, so a limiter keeps at most
`max_keys` buckets: past it, buckets that have refilled (which remember nothing worth
keeping) are dropped first, then the oldest.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass

__all__ = ["RateLimiter", "retry_after"]


@dataclass
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    def __init__(self, max_keys: int = 10_000) -> None:
        self.max_keys = max_keys
        self._buckets: dict[Hashable, _Bucket] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: Hashable, now: float, rate: float, burst: int) -> float:
        """Take one token for `key`: `0.0` when the request may go now, otherwise the seconds
        until a token will be there. A `rate` of 0 or less is no limit."""
        if rate <= 0:
            return 0.0
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self._prune(now, rate, burst)
            bucket = self._buckets[key] = _Bucket(float(burst), now)
        else:
            elapsed = max(0.0, now - bucket.at)  # a clock set back refills nothing
            bucket.tokens = min(float(burst), bucket.tokens + elapsed * rate)
            bucket.at = max(bucket.at, now)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / rate

    def _prune(self, now: float, rate: float, burst: int) -> None:
        full = [
            key
            for key, b in self._buckets.items()
            if b.tokens + max(0.0, now - b.at) * rate >= burst
        ]
        for key in full:
            del self._buckets[key]
        excess = len(self._buckets) - self.max_keys // 2
        if excess > 0:  # still crowded: the oldest go (dicts keep insertion order)
            for key in list(self._buckets)[:excess]:
                del self._buckets[key]


def retry_after(wait: float) -> int:
    """`Retry-After` in whole seconds, at least 1: a client told 0 would retry at once."""
    return max(1, math.ceil(wait))
