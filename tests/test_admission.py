"""Memory-aware admission: a request that would take the KV reservations past the memory budget
waits for room, then gets 503 with Retry-After (in its API's shape) — the server never crashes and
serves it once running requests finish.

The fault model stalls its engine step on "FAULT_STALL", which holds the first request's
reservation for a known time; its KV cache costs 8 bytes per token.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
import time

import anthropic
import httpx
import openai
import pytest

from conftest import SCRIPTED_DEFAULT

STALL_S = 8.0

BUDGET_BYTES = int(0.01 * 2**20)  # --memory-budget-mb 0.01: 1310 tokens at 8 bytes per token


@pytest.fixture(scope="module")
def server(start_server, models_dir):
    from vllm_mlx_testing.fault_model import build_fault_model

    model = build_fault_model(models_dir / "fault-admission", stall_seconds=STALL_S, default_reply=SCRIPTED_DEFAULT)
    return start_server(model, "--trust-remote-code", "--memory-budget-mb", "0.01", "--admission-wait", "2",
                        "--max-model-len", "4096")


def _client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0, timeout=60)


def _chat(server, content: str, max_tokens: int, **kw) -> str:
    return _client(server).chat.completions.create(
        model="m", messages=[{"role": "user", "content": content}], max_tokens=max_tokens, **kw).choices[0].message.content


def _stall(server, result: dict) -> threading.Thread:
    """A request that holds ~800 tokens of reservation while the engine is stalled."""
    thread = threading.Thread(target=lambda: result.update(text=_chat(server, "FAULT_STALL", 800)))
    thread.start()
    deadline = time.monotonic() + 10
    while server.health()["admission"]["admitted"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    return thread


def _over_budget_calls(server) -> list:
    """The same over-budget request through three APIs; each returns (status, headers, body)."""
    def openai_chat():
        resp = httpx.post(f"{server.base_url}/v1/chat/completions", timeout=30,
                          json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 800})
        return resp.status_code, resp.headers, resp.json()

    def claude():
        with pytest.raises(anthropic.InternalServerError) as err:
            anthropic.Anthropic(base_url=server.base_url, api_key="x", max_retries=0).messages.create(
                model="m", max_tokens=800, messages=[{"role": "user", "content": "hi"}])
        return err.value.status_code, err.value.response.headers, err.value.body

    def completions():
        with pytest.raises(openai.APIStatusError) as err:
            _client(server).completions.create(model="m", prompt="hi", max_tokens=800)
        return err.value.status_code, err.value.response.headers, err.value.body

    return [openai_chat, claude, completions]


def test_over_budget_requests_get_503_with_retry_after_then_succeed(server):
    health = server.health()
    assert health["admission"]["budget_bytes"] == BUDGET_BYTES and health["admission"]["kv_bytes_per_token"] == 8
    held: dict = {}
    stalled = _stall(server, held)
    started = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        refused = [pool.submit(call) for call in _over_budget_calls(server)]
        small = pool.submit(_chat, server, "small", 100)  # fits beside the stalled request
        (s1, h1, b1), (s2, h2, b2), (s3, h3, b3) = [f.result() for f in refused]
        waited = time.monotonic() - started
        assert s1 == s2 == s3 == 503 and all(h["retry-after"].isdigit() for h in (h1, h2, h3))
        assert b1["error"]["code"] == "memory_budget_exceeded" and b3["code"] == "memory_budget_exceeded"
        assert b2["type"] == "error" and b2["error"]["type"] == "overloaded_error"  # Anthropic's shape
        assert 1.9 <= waited < STALL_S  # they waited --admission-wait for room first
        assert small.result() == SCRIPTED_DEFAULT
    stalled.join(30)
    assert held["text"] == SCRIPTED_DEFAULT
    # the same request succeeds once the reservation is back; the server never stopped
    assert _chat(server, "hi", 800) == SCRIPTED_DEFAULT
    after = server.health()
    assert after["status"] == "ok" and after["admission"]["reserved_bytes"] == 0 and after["admission"]["refused"] >= 3


def test_a_waiting_request_is_admitted_when_room_frees_up(server):
    refused_before = server.health()["admission"]["refused"]
    holder = threading.Thread(target=lambda: pytest.raises(httpx.TimeoutException, httpx.post,
                              f"{server.base_url}/v1/completions", timeout=1.0,
                              json={"prompt": "FAULT_STALL", "max_tokens": 800}))
    holder.start()  # holds the memory, then hangs up after 1 s: its reservation is released at once
    deadline = time.monotonic() + 10
    while server.health()["admission"]["admitted"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    started = time.monotonic()
    assert _chat(server, "hi", 800) == SCRIPTED_DEFAULT  # waited for room instead of a 503
    assert time.monotonic() - started > 0.5
    holder.join(30)
    assert server.health()["admission"]["refused"] == refused_before


def test_a_request_bigger_than_the_budget_runs_alone(server):
    # 128 continuations x ~60 tokens > the whole budget: admitted when nothing else holds memory
    resp = _client(server).chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}],
                                                   max_tokens=40, n=128)
    assert len(resp.choices) == 128
    assert server.health()["admission"]["reserved_bytes"] == 0


def test_kv_bytes_per_token_is_measured_from_the_model(tiny_qwen3):
    from mlx_lm import load

    from vllm_mlx.engine.kv_estimate import kv_bytes_per_token

    model, _ = load(str(tiny_qwen3))
    # 2 layers x (keys + values) x 2 KV heads x 16 dims x 4 bytes (float32 weights, float32 cache)
    assert kv_bytes_per_token(model) == 2 * 2 * 2 * 16 * 4
