"""`--rate-limit N`: a token bucket of N requests per minute per API key (per client IP without keys).

Over the limit a request gets 429 in the API's error shape with a Retry-After header (whole seconds
until one request is allowed again). /health, / and /ui (the page) are never limited.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

from starlette.requests import Request

from .auth import presented_key
from .errors import error_response_for

EXEMPT_PATHS = frozenset({"/health", "/", "/ui"})
MAX_BUCKETS = 10_000  # idle buckets beyond this are dropped (full buckets carry no state worth keeping)


@dataclass
class Bucket:
    tokens: float
    updated: float


class TokenBuckets:
    """Refill `per_minute / 60` tokens a second up to a burst of `per_minute`; one request costs one."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic):
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.clock = clock
        self._buckets: dict[str, Bucket] = {}

    def take(self, who: str) -> float:
        """0 if the request may go now, else the seconds until it may."""
        now = self.clock()
        bucket = self._buckets.get(who)
        if bucket is None:
            if len(self._buckets) >= MAX_BUCKETS:
                self._evict(now)
            bucket = self._buckets[who] = Bucket(self.capacity, now)
        bucket.tokens = min(self.capacity, bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate

    def _evict(self, now: float) -> None:
        full = [k for k, b in self._buckets.items() if b.tokens + (now - b.updated) * self.rate >= self.capacity]
        for k in full or list(self._buckets)[: len(self._buckets) // 2]:
            del self._buckets[k]


class RateLimitMiddleware:
    """Plain ASGI middleware (streams pass through untouched). Sits inside the API-key check, so with
    keys configured only valid keys reach it and each key has its own bucket."""

    def __init__(self, app, per_minute: int, by_key: bool):
        self.app = app
        self.buckets = TokenBuckets(per_minute)
        self.by_key = by_key

    def _who(self, request: Request) -> str:
        key = presented_key(request) if self.by_key else None
        if key:
            return "key:" + key
        return "ip:" + (request.client.host if request.client else "unknown")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = Request(scope)
        if request.url.path in EXEMPT_PATHS or request.method == "OPTIONS":
            return await self.app(scope, receive, send)
        wait = self.buckets.take(self._who(request))
        if wait <= 0:
            return await self.app(scope, receive, send)
        retry_after = max(1, math.ceil(wait))
        response = error_response_for(
            request.url.path, 429, f"rate limit exceeded ({int(self.buckets.capacity)} requests per minute); "
            f"retry after {retry_after} s", code="rate_limit_exceeded")
        response.headers["Retry-After"] = str(retry_after)
        await response(scope, receive, send)
