"""Every request body is read, bounded and checked here before any route parses it:

* larger than --max-request-bytes: 413 (on Content-Length, or while reading a chunked body);
* not complete within --body-timeout of its headers: 408, and the connection is closed;
* a JSON body holding a lone UTF-16 surrogate in any string (unicode_check.py): 400.

Each answer is in the error shape of the API the path belongs to. The body is then replayed to the app.
"""

from __future__ import annotations

import asyncio
import logging

from .errors import error_response_for
from .unicode_check import lone_surrogate

logger = logging.getLogger(__name__)


class BodySizeLimitMiddleware:
    """Reads the body (up to the limit, within the deadline) before the route does."""

    def __init__(self, app, max_bytes: int, timeout_s: float | None = None):
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or ())
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(scope, receive, send, 413, f"the request body exceeds the limit of "
                                      f"{self.max_bytes} bytes (--max-request-bytes)", "request_too_large")
        try:
            async with asyncio.timeout(self.timeout_s):
                messages, size = await self._read(receive)
        except TimeoutError:
            client = (scope.get("client") or ("?",))[0]
            logger.info("closing the connection from %s: its %s %s body took longer than %gs (--body-timeout)",
                        client, scope["method"], scope["path"], self.timeout_s)
            return await self._refuse(scope, receive, send, 408, f"the request body did not arrive within "
                                      f"{self.timeout_s:g} s (--body-timeout)", "request_timeout", close=True)
        if messages is None:
            return await self._refuse(scope, receive, send, 413, f"the request body exceeds the limit of "
                                      f"{self.max_bytes} bytes (--max-request-bytes)", "request_too_large")
        complete = bool(messages) and messages[-1]["type"] == "http.request"
        if size and complete and _is_json(headers.get(b"content-type")):
            body = b"".join(m.get("body", b"") for m in messages)
            lone = lone_surrogate(body)
            if lone is not None:
                return await self._refuse(scope, receive, send, 400, f"the request holds a lone UTF-16 surrogate "
                                          f"({lone}) in a string; text must be valid Unicode", "invalid_unicode")
            messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def replay():
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def _read(self, receive) -> tuple[list[dict] | None, int]:
        """The body's messages, or None when it is over the limit."""
        messages, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: let the app see it
                messages.append(message)
                return messages, size
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                return None, size
            messages.append(message)
            if not message.get("more_body", False):
                return messages, size

    async def _refuse(self, scope, receive, send, status: int, message: str, code: str, close: bool = False) -> None:
        response = error_response_for(scope["path"], status, message, code=code)
        if close:  # the rest of a slow body is not waited for
            response.headers["connection"] = "close"
        await response(scope, receive, send)


def _is_json(content_type: bytes | None) -> bool:
    """Bodies FastAPI parses as JSON: a JSON media type, or none at all."""
    return content_type is None or b"json" in content_type.lower()
