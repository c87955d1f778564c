"""SIGTERM: intake stops, running requests drain, the rest end with a final event; clean exit."""

from __future__ import annotations

import json
import signal
import threading
import time

import httpx
import pytest


def _stream(server, max_tokens: int, lines: list, started: threading.Event) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "go"}], "max_tokens": max_tokens,
            "temperature": 0, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json=body, timeout=60) as resp:
        for line in resp.iter_lines():
            if line:
                lines.append(line)
                if len(lines) >= 3:
                    started.set()


def _finish_reasons(lines: list) -> list:
    chunks = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    return [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]


def test_sigterm_drains_then_ends_streams_cleanly(start_server, tmp_path_factory):
    # the demo model is slow enough that a 4000-token stream outlasts the drain window
    server = start_server("--shutdown-timeout", "1.5", env={"VLLM_MLX_CACHE": str(tmp_path_factory.mktemp("demo"))})
    short, long_ = [], []
    short_started, long_started = threading.Event(), threading.Event()
    threads = [threading.Thread(target=_stream, args=(server, 40, short, short_started)),
               threading.Thread(target=_stream, args=(server, 4000, long_, long_started))]
    for t in threads:
        t.start()
    assert short_started.wait(30) and long_started.wait(30)
    signalled = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    with pytest.raises(httpx.HTTPError):  # intake is closed
        httpx.get(f"{server.base_url}/health", timeout=2)
    for t in threads:
        t.join(30)
    assert time.monotonic() - signalled < 10
    # uvicorn re-raises the captured signal once its shutdown is complete: exit status -SIGTERM
    assert server.proc.wait(30) in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in server.log()
    assert _finish_reasons(short) == ["length"] and short[-1] == "data: [DONE]"  # finished within the drain
    assert _finish_reasons(long_) == ["abort"] and long_[-1] == "data: [DONE]"  # ended, not cut
    assert "drain time is over" in server.log()


def _raw_stream(server, path: str, body: dict, lines: list, started: threading.Event) -> None:
    with httpx.stream("POST", f"{server.base_url}{path}", json=body, timeout=60) as resp:
        for line in resp.iter_lines():
            if line:
                lines.append(line)
                if len(lines) >= 8:
                    started.set()


def test_sigterm_ends_anthropic_and_responses_streams_with_a_final_event(start_server, tmp_path_factory):
    server = start_server("--shutdown-timeout", "1", env={"VLLM_MLX_CACHE": str(tmp_path_factory.mktemp("demo"))})
    go = [{"role": "user", "content": "go"}]
    streams = {
        "/v1/messages": {"model": "m", "max_tokens": 4000, "messages": go, "stream": True},
        "/v1/responses": {"model": "m", "max_output_tokens": 4000, "input": "go", "stream": True},
    }
    lines = {path: [] for path in streams}
    started = {path: threading.Event() for path in streams}
    threads = [threading.Thread(target=_raw_stream, args=(server, path, body, lines[path], started[path]))
               for path, body in streams.items()]
    whole = {}  # the same long requests without streaming
    threads += [threading.Thread(target=lambda p=path, b=body: whole.update(
        {p: httpx.post(f"{server.base_url}{p}", json={**b, "stream": False}, timeout=60)}))
        for path, body in streams.items()]
    for t in threads:
        t.start()
    assert all(e.wait(30) for e in started.values())
    server.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(30)
    assert server.proc.wait(30) in (0, -signal.SIGTERM)
    # each stream ends with its API's own final event, never a cut connection or a fake normal end
    anthropic_events = [line[7:] for line in lines["/v1/messages"] if line.startswith("event: ")]
    assert anthropic_events[-1] == "error" and "message_stop" not in anthropic_events
    last = json.loads(lines["/v1/messages"][-1][6:])
    assert last["type"] == "error" and last["error"]["type"] == "overloaded_error"
    last = json.loads(lines["/v1/responses"][-1][6:])
    assert last["type"] == "response.failed" and last["response"]["status"] == "failed"
    # non-streamed, they are a 503 in their API's shape, not a normal-looking answer
    assert whole["/v1/messages"].status_code == 503 and whole["/v1/messages"].json()["type"] == "error"
    assert whole["/v1/responses"].status_code == 503 and "ended" in whole["/v1/responses"].json()["error"]["message"]
