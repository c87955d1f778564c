"""Fault isolation and the engine watchdog, with a model that fails or stalls on demand.

A request whose processing raises fails alone with a clear error while the others finish; an
engine step that stalls turns /health 503 (with the reason) until the engine moves again; with
--watchdog-exit, a long stall shuts the server down cleanly.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from conftest import SCRIPTED_DEFAULT


@pytest.fixture(scope="module")
def fault_model(models_dir):
    from vllm_mlx_testing.fault_model import build_fault_model

    return build_fault_model(models_dir / "fault-qwen3", stall_seconds=6.0, default_reply=SCRIPTED_DEFAULT)


@pytest.fixture(scope="module")
def fault_server(start_server, fault_model):
    return start_server(fault_model, "--trust-remote-code", "--watchdog-stall", "1.5")


def _chat(server, content: str, stream: bool = False):
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0, timeout=60)
    messages = [{"role": "user", "content": content}]
    if not stream:
        return client.chat.completions.create(model="m", messages=messages, temperature=0).choices[0].message.content
    return "".join(c.choices[0].delta.content or "" for c in
                   client.chat.completions.create(model="m", messages=messages, stream=True) if c.choices)


def test_a_failing_request_fails_alone(fault_server):
    failed_before = fault_server.health()["engine"]["requests_failed"]
    with ThreadPoolExecutor(8) as pool:
        good = [pool.submit(_chat, fault_server, f"hello {i}", i % 2 == 0) for i in range(6)]
        bad = pool.submit(_chat, fault_server, "please FAULT_RAISE now")
        bad_stream = pool.submit(_chat, fault_server, "again FAULT_RAISE", True)
        assert [f.result() for f in good] == [SCRIPTED_DEFAULT] * 6
        with pytest.raises(openai.InternalServerError) as err:
            bad.result()
        assert "InjectedFault" in err.value.message and "FAULT_RAISE" in err.value.message
        with pytest.raises(openai.APIError) as err:  # the stream ends with an error event, not a cut
            bad_stream.result()
        assert "InjectedFault" in str(err.value)
    health = fault_server.health()
    assert health["status"] == "ok" and health["engine"]["requests_failed"] == failed_before + 2
    assert _chat(fault_server, "after the failures") == SCRIPTED_DEFAULT
    assert health["engine"]["running"] == health["engine"]["waiting"] == 0


def test_watchdog_marks_a_stalled_engine_unhealthy_then_recovers(fault_server):
    result = {}
    worker = threading.Thread(target=lambda: result.update(text=_chat(fault_server, "FAULT_STALL please")))
    started = time.monotonic()
    worker.start()
    seen = None
    while time.monotonic() - started < 6.0 and seen is None:
        resp = httpx.get(f"{fault_server.base_url}/health", timeout=2)
        assert resp.elapsed.total_seconds() < 2.0  # /health answers even while the engine is stuck
        if resp.status_code == 503:
            seen = resp.json()
        time.sleep(0.1)
    assert seen is not None and seen["status"] == "unhealthy" and "stalled" in seen["reason"]
    worker.join(30)
    assert result["text"] == SCRIPTED_DEFAULT  # a slow step is not a failure
    assert httpx.get(f"{fault_server.base_url}/health", timeout=2).status_code == 200
    assert "moving again" in fault_server.log()


def test_watchdog_exit_shuts_a_stuck_server_down(start_server, models_dir):
    from vllm_mlx_testing.fault_model import build_fault_model

    model = build_fault_model(models_dir / "fault-long", stall_seconds=8.0)
    server = start_server(model, "--trust-remote-code", "--watchdog-stall", "1", "--watchdog-exit", "2",
                          "--shutdown-timeout", "1")
    threading.Thread(target=lambda: httpx.post(
        f"{server.base_url}/v1/completions", json={"prompt": "FAULT_STALL", "max_tokens": 2}, timeout=60),
        daemon=True).start()
    assert server.proc.wait(40) is not None
    log = server.log()
    assert "engine stalled" in log and "shutting down" in log and "Application shutdown complete" in log


def test_a_message_or_template_failure_is_a_400_for_that_request_only(fault_server):
    bad = [{"role": "user", "content": "hi"},
           {"role": "assistant", "content": None, "tool_calls": [{"id": "1", "type": "function", "function": 5}]},
           {"role": "user", "content": "again"}]
    client = openai.OpenAI(base_url=f"{fault_server.base_url}/v1", api_key="x", max_retries=0, timeout=60)
    with ThreadPoolExecutor(4) as pool:
        good = [pool.submit(_chat, fault_server, f"fine {i}", True) for i in range(3)]
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(model="m", messages=bad)
        assert "malformed" in err.value.message
        with pytest.raises(openai.BadRequestError) as err:  # the template itself raises
            client.chat.completions.create(model="m", messages=bad[:1], extra_body={"chat_template_kwargs": {"tools": 5}})
        assert "chat template" in err.value.message
        assert [f.result() for f in good] == [SCRIPTED_DEFAULT] * 3
