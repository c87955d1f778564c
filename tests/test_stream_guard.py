"""A stream whose producer raises ends with an error event in its API's shape (unit test of the
ASGI middleware on a tiny Starlette app; the server installs the same middleware)."""

from __future__ import annotations

import json

import pytest
from starlette.applications import Starlette
from starlette.responses import StreamingResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from vllm_mlx.api.stream_guard import StreamErrorMiddleware


async def _failing(request):
    async def body():
        yield "data: {\"first\": 1}\n\n"
        raise KeyError("boom")

    return StreamingResponse(body(), media_type="text/event-stream")


def _client() -> TestClient:
    paths = ["/v1/chat/completions", "/v1/messages", "/v1/responses"]
    app = Starlette(routes=[Route(p, _failing, methods=["POST"]) for p in paths])
    app.add_middleware(StreamErrorMiddleware)
    return TestClient(app)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages", "/v1/responses"])
def test_a_failing_stream_ends_with_an_error_event(path):
    resp = _client().post(path)
    events = [line for line in resp.text.splitlines() if line.startswith("data: ")]
    assert events[0] == 'data: {"first": 1}'
    if path == "/v1/chat/completions":
        assert events[-1] == "data: [DONE]"
        assert json.loads(events[-2][6:])["error"]["code"] == "stream_error"
    else:
        last = json.loads(events[-1][6:])
        assert last["type"] == "error" and "KeyError" in json.dumps(last)
