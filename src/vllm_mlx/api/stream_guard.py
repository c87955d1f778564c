"""A streamed answer whose producer raises ends with an error event in its API's shape, not a cut
connection: the client learns what happened, and the failure stays with that one request."""

from __future__ import annotations

import json
import logging

from .errors import ANTHROPIC_PREFIX, anthropic_error_body, error_body

logger = logging.getLogger(__name__)


def error_event(path: str, message: str) -> bytes:
    if path == ANTHROPIC_PREFIX or path.startswith(ANTHROPIC_PREFIX + "/"):
        return f"event: error\ndata: {json.dumps(anthropic_error_body(500, message))}\n\n".encode()
    if path.startswith("/v1/responses"):
        body = {"type": "error", "code": "server_error", "message": message}
        return f"event: error\ndata: {json.dumps(body)}\n\n".encode()
    return f"data: {json.dumps(error_body(500, message, code='stream_error'))}\n\ndata: [DONE]\n\n".encode()


class StreamErrorMiddleware:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        state = {"sse": False, "done": False}

        async def watch(message):
            if message["type"] == "http.response.start":
                headers = dict(message.get("headers") or ())
                state["sse"] = headers.get(b"content-type", b"").startswith(b"text/event-stream")
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                state["done"] = True
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception as exc:
            if not state["sse"] or state["done"]:
                raise  # not a stream in progress: the usual error handling answers
            logger.exception("stream of %s failed", scope["path"])
            await send({"type": "http.response.body", "more_body": False,
                        "body": error_event(scope["path"], f"the stream failed: {type(exc).__name__}: {exc}")})
