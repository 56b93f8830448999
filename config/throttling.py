"""API rate limits as sliding-window counters in Redis: one round trip per request.

DRF's own throttles keep every caller's request timestamps as a pickled list in the cache, read
and written back on each request (two round trips, and a list that grows with the rate: 6000
entries at the default user rate). Here each caller has one counter per window; the rate over
the last `duration` seconds is estimated from the current window's count plus the previous one's
weighted by how much of it still overlaps (the approach of Cloudflare's and most API gateways'
limiters). Counters live in the Redis the cache uses, under its key prefix, and expire on their
own.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any

import redis
from django.conf import settings
from rest_framework import throttling
from rest_framework.request import Request

_client: redis.Redis | None = None
_client_lock = threading.Lock()
_script: Any = None


def redis_client() -> redis.Redis:
    global _client
    if _client is None:
        with _client_lock:
            if _client is None:
                _client = redis.Redis.from_url(settings.REDIS_URL)
    return _client


# One round trip: count this request in the current window (which expires on its own) and read
# the previous window's count.
_COUNT = """
local current = redis.call('INCR', KEYS[1])
if current == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return {current, redis.call('GET', KEYS[2])}
"""


def _count(*, keys: list[str], args: list[int]) -> tuple[int, bytes | None]:
    global _script
    if _script is None:
        _script = redis_client().register_script(_COUNT)
    current, previous = _script(keys=keys, args=args)
    return int(current), previous


class _SlidingWindow:
    """allow_request for SimpleRateThrottle subclasses: get_cache_key and rate come from DRF."""

    key: str | None
    num_requests: int
    duration: int

    def allow_request(self, request: Request, view: Any) -> bool:
        if self.rate is None:  # type: ignore[attr-defined]
            return True
        key = self.get_cache_key(request, view)  # type: ignore[attr-defined]
        if key is None:
            return True
        now = time.time()
        window, into = divmod(now, self.duration)
        window = int(window)
        prefix = f"{settings.CACHES['default'].get('KEY_PREFIX', '')}:{key}"
        current, previous = _count(
            keys=[f"{prefix}:{window}", f"{prefix}:{window - 1}"], args=[2 * self.duration]
        )
        estimate = int(previous or 0) * (1.0 - into / self.duration) + int(current)  # with this one
        if estimate <= self.num_requests:
            return True
        redis_client().decr(f"{prefix}:{window}")  # a refused request does not count against the caller
        self._wait = self._retry_after(int(previous or 0), estimate - 1, into)
        return False

    def _retry_after(self, previous: int, estimate: float, into: float) -> float:
        """Seconds until one more request fits: the previous window's share decays at
        previous/duration per second; by the end of this window at the latest."""
        left = self.duration - into
        if previous <= 0:
            return left
        return min(left, max((estimate - self.num_requests + 1) * self.duration / previous, 1.0))

    def wait(self) -> float | None:
        return math.ceil(getattr(self, "_wait", self.duration))


class UserRateThrottle(_SlidingWindow, throttling.UserRateThrottle):
    """Authenticated callers, per user (LOUPE_THROTTLE_USER)."""


class AnonRateThrottle(_SlidingWindow, throttling.AnonRateThrottle):
    """Anonymous callers, per client address (LOUPE_THROTTLE_ANON)."""
