"""413 for request bodies over --max-request-bytes, before any route parses them."""

from __future__ import annotations

from .errors import error_response_for


class BodySizeLimitMiddleware:
    """Reads the body (up to the limit) before the route does, so an oversized one is refused with a 413
    in the API's error shape whether or not it declared a Content-Length; the body is then replayed."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(scope, receive, send)
        messages, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: let the app see it
                messages.append(message)
                break
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                return await self._refuse(scope, receive, send)
            messages.append(message)
            if not message.get("more_body", False):
                break

        async def replay():
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope, receive, send) -> None:
        response = error_response_for(
            scope["path"], 413, f"the request body exceeds the limit of {self.max_bytes} bytes (--max-request-bytes)",
            code="request_too_large")
        await response(scope, receive, send)
