"""API-key authentication for every route but /health, / and /ui (Bearer token or x-api-key header)."""

from __future__ import annotations

import hmac
import logging

from starlette.requests import Request

from .errors import error_response_for

logger = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/health", "/", "/ui"})  # "/": the liveness probe some clients send (HEAD /); "/ui": the page


def open_paths(public_metrics: bool = False, private_health: bool = False) -> frozenset[str]:
    """Routes served without the key: "/" and the page at /ui always, /health unless private, /metrics when
    public."""
    return frozenset({"/", "/ui"} | (set() if private_health else {"/health"}) | ({"/metrics"} if public_metrics else set()))


def presented_key(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip()
    return request.headers.get("x-api-key")


class APIKeyMiddleware:
    """Rejects requests without the server's key with a 401 in the API's error shape.

    A plain ASGI middleware (not BaseHTTPMiddleware), so streaming responses and
    client-disconnect detection pass through untouched.
    """

    def __init__(self, app, keys: tuple[str, ...], open_paths: frozenset[str] = OPEN_PATHS):
        self.app = app
        self._open = open_paths
        self._keys = tuple(k.encode() for k in keys)

    def _valid(self, key: str | None) -> bool:
        if key is None:
            return False
        given = key.encode()
        # compare against every key, constant time each, so timing reveals nothing
        return any([hmac.compare_digest(given, k) for k in self._keys])

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = Request(scope)
        valid = self._valid(presented_key(request))
        if request.url.path in self._open or request.method == "OPTIONS" or valid:
            scope.setdefault("state", {})["authenticated"] = valid  # /health shows its details only then
            return await self.app(scope, receive, send)
        logger.info("rejected unauthenticated %s %s", request.method, request.url.path)
        response = error_response_for(
            request.url.path, 401, "invalid or missing API key (send 'Authorization: Bearer KEY' or 'x-api-key')",
            code="invalid_api_key")
        await response(scope, receive, send)
