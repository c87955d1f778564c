"""`--request-log FILE`: one JSON line per HTTP request, describing what the client sent.

Meant for finding out how a client talks to the server (and used by the client-compatibility
suite as evidence): method, path, status, how it authenticated, its user agent, and for JSON
bodies a summary — model, stream, stream_options, the message / input roles, whether a system
prompt came, how many tools and their names, image parts — never the prompt text or the key.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

MAX_BODY = 8 << 20  # bodies larger than this are summarized as "too large"
IMAGE_TYPES = {"image", "image_url", "input_image"}


def _auth_scheme(headers: dict[str, str]) -> str:
    if headers.get("authorization", "").lower().startswith("bearer "):
        return "bearer"
    if "x-api-key" in headers:
        return "x-api-key"
    return "none"


def _tool_names(tools: Any) -> list[str]:
    names = []
    for tool in tools if isinstance(tools, list) else []:
        if isinstance(tool, dict):
            spec = tool.get("function") if isinstance(tool.get("function"), dict) else tool
            names.append(str(spec.get("name") or tool.get("type") or "?"))
    return names


def _parts(messages: list) -> list:
    """Content parts of the messages, those nested in tool results (tool_result blocks,
    function_call_output lists) included."""
    out, stack = [], [m for m in messages if isinstance(m, dict)]
    while stack:
        item = stack.pop()
        for key in ("content", "output"):
            if isinstance(item.get(key), list):
                parts = [p for p in item[key] if isinstance(p, dict)]
                out.extend(parts)
                stack.extend(parts)
    return out


def summarize_body(body: Any) -> dict[str, Any]:
    """What matters about a generation request body (no prompt text)."""
    if not isinstance(body, dict):
        return {}
    messages = body.get("messages")
    if not isinstance(messages, list):
        messages = body.get("input") if isinstance(body.get("input"), list) else []
    roles = [str(m.get("role") or m.get("type")) for m in messages if isinstance(m, dict)]
    summary: dict[str, Any] = {
        "model": body.get("model"),
        "stream": bool(body.get("stream")),
        "roles": roles,
        "system": bool(body.get("system") or body.get("instructions"))
        or any(r in ("system", "developer") for r in roles),
        "tools": _tool_names(body.get("tools")),
        "images": sum(1 for p in _parts(messages) if p.get("type") in IMAGE_TYPES),
    }
    for key in ("stream_options", "max_tokens", "max_completion_tokens", "max_output_tokens", "temperature",
                "tool_choice", "thinking", "reasoning"):
        if key in body:
            summary[key] = body[key]
    return summary


class RequestLogMiddleware:
    """Pure ASGI middleware: watches the request body go by, writes a line when the response starts."""

    def __init__(self, app, path: str):
        self.app = app
        self.path = path
        self._lock = threading.Lock()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        chunks: list[bytes] = []
        size = 0

        async def watched_receive():
            nonlocal size
            message = await receive()
            if message["type"] == "http.request" and size <= MAX_BODY:
                body = message.get("body", b"")
                size += len(body)
                chunks.append(body)
            return message

        async def watched_send(message):
            if message["type"] == "http.response.start":
                self._write(scope, message["status"], b"".join(chunks) if size <= MAX_BODY else None)
            await send(message)

        await self.app(scope, watched_receive, watched_send)

    def _write(self, scope, status: int, body: bytes | None) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        query = scope.get("query_string", b"").decode("latin-1")
        record: dict[str, Any] = {
            "time": round(time.time(), 3),
            "method": scope["method"],
            "path": scope["path"] + (f"?{query}" if query else ""),
            "status": status,
            "auth": _auth_scheme(headers),
            "user_agent": headers.get("user-agent", ""),
        }
        if body is None:
            record["body"] = "too large"
        elif body:
            try:
                record["body"] = summarize_body(json.loads(body))
            except ValueError:
                record["body"] = f"{len(body)} bytes, not JSON"
        line = json.dumps(record, ensure_ascii=False, default=str) + "\n"
        with self._lock, open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
