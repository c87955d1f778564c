"""Cancelling a running request (POST /v1/requests/{id}/cancel, POST /v1/responses/{id}/cancel), per API,
with the official SDKs against a real server process: the id is in the response headers and the body, the
client gets its API's normal end (not an error), and a cancel is told apart from a client disconnect."""

from __future__ import annotations

import threading
import time

import anthropic
import httpx
import openai
import pytest

KEY = "cancel-key"
LONG = 3000  # tokens asked for: far more than are made before the cancel
AUTH = {"authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def server(start_server, models_dir):
    from vllm_mlx_testing import build_tiny_model

    # Wider than the usual tiny model, so LONG tokens take seconds even on a fast, quiet machine and
    # every cancel lands while its request is still running.
    slow = build_tiny_model(models_dir / "cancel-qwen3", hidden_size=512, num_hidden_layers=4,
                            num_attention_heads=8, num_key_value_heads=4, intermediate_size=1536)
    return start_server(slow, "--served-model-name", "tiny", "--api-key", KEY)


@pytest.fixture(scope="module")
def oai(server):
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=KEY, max_retries=0)


def cancel(server, request_id: str) -> httpx.Response:
    return httpx.post(f"{server.base_url}/v1/requests/{request_id}/cancel", headers=AUTH, timeout=10)


def running(server) -> dict:
    r = httpx.get(f"{server.base_url}/v1/requests", headers=AUTH, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def wait_running(server, request_id: str | None = None, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in running(server)["data"]:
            if request_id is None or entry["id"] == request_id:
                return entry
        time.sleep(0.02)
    raise AssertionError(f"{request_id or 'a request'} never showed as running")


def test_chat_stream_cancel_ends_with_a_final_chunk_and_done(server, oai):
    stream = oai.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Go on forever."}],
                                         max_tokens=LONG, stream=True,
                                         stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    request_id = stream.response.headers["x-request-id"]
    chunks = iter(stream)
    first = next(chunks)
    assert first.id == request_id  # the header names the body's id
    for chunk in chunks:  # some tokens are made before the cancel
        if chunk.choices and chunk.choices[0].delta.content:
            break
    entry = wait_running(server, request_id)
    assert entry["api"] == "chat.completions" and entry["model"] == "tiny" and entry["prompt_tokens"] > 0
    assert cancel(server, request_id).json() == {"id": request_id, "object": "request", "api": "chat.completions",
                                                  "cancelled": True}
    rest = list(chunks)  # the SDK reads to [DONE] without an error
    finals = [c for c in rest if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finals] == ["cancelled"]
    usage = rest[-1].usage
    assert 0 < usage.completion_tokens < LONG
    assert all(e["id"] != request_id for e in running(server)["data"])
    assert cancel(server, request_id).status_code == 404  # over: nothing to cancel


def test_chat_non_stream_cancel_answers_with_what_was_made(server, oai):
    result: dict = {}

    def ask():
        raw = oai.chat.completions.with_raw_response.create(
            model="tiny", messages=[{"role": "user", "content": "Long answer please."}], max_tokens=LONG,
            extra_body={"ignore_eos": True})
        result["id"], result["completion"] = raw.headers["x-request-id"], raw.parse()

    thread = threading.Thread(target=ask)
    thread.start()
    entry = wait_running(server)
    time.sleep(0.2)
    assert cancel(server, entry["id"]).status_code == 200
    thread.join(30)
    completion = result["completion"]
    assert completion.id == result["id"] == entry["id"]
    assert completion.choices[0].finish_reason == "cancelled"
    assert 0 < completion.usage.completion_tokens < LONG


def test_completions_cancel_ends_every_prompt(server, oai):
    stream = oai.completions.create(model="tiny", prompt=["one", "two"], max_tokens=LONG, stream=True,
                                    extra_body={"ignore_eos": True})
    request_id = stream.response.headers["x-request-id"]
    chunks = iter(stream)
    assert next(chunks).id == request_id
    entry = wait_running(server, request_id)
    assert entry["api"] == "completions" and entry["n"] == 2  # the two prompts' engine requests, as one
    assert cancel(server, request_id).status_code == 200
    finals = {c.choices[0].index: c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason}
    assert finals == {0: "cancelled", 1: "cancelled"}


def test_responses_stream_cancel_through_the_sdk(server, oai):
    stream = oai.responses.create(model="tiny", input="Write a very long story.", max_output_tokens=LONG,
                                  stream=True, extra_body={"ignore_eos": True})
    response_id = stream.response.headers["x-request-id"]
    events = iter(stream)
    for event in events:
        if event.type == "response.output_text.delta":
            break
    assert event.item_id and response_id.startswith("resp_")
    cancelled = oai.responses.cancel(response_id)  # the SDK's own method: POST /v1/responses/{id}/cancel
    assert cancelled.id == response_id and cancelled.status == "cancelled"
    assert cancelled.incomplete_details.reason == "cancelled"
    rest = list(events)
    last = rest[-1]
    assert last.type == "response.incomplete" and last.response.status == "cancelled"
    assert last.response.id == response_id
    assert last.response.output[0].status == "incomplete" and last.response.output[0].content[0].text
    assert 0 < last.response.usage.output_tokens < LONG
    assert not [e for e in rest if e.type in ("response.failed", "error")]
    assert oai.responses.cancel(response_id).status == "cancelled"  # again: the same answer
    done = oai.responses.create(model="tiny", input="Short.", max_output_tokens=2)
    with pytest.raises(openai.BadRequestError):  # as OpenAI: a completed response cannot be cancelled
        oai.responses.cancel(done.id)
    with pytest.raises(openai.NotFoundError):
        oai.responses.cancel("resp_unknown")


def test_responses_non_stream_cancel(server, oai):
    result: dict = {}

    def ask():
        result["response"] = oai.responses.create(model="tiny", input="Another long story.",
                                                  max_output_tokens=LONG, extra_body={"ignore_eos": True})

    thread = threading.Thread(target=ask)
    thread.start()
    entry = wait_running(server)
    assert entry["api"] == "responses"
    cancelled = oai.responses.cancel(entry["id"])  # at once: a quiet machine makes the tokens fast
    thread.join(30)
    assert result["response"].status == cancelled.status == "cancelled"
    assert result["response"].id == cancelled.id == entry["id"]


def test_anthropic_stream_cancel_ends_the_turn(server):
    client = anthropic.Anthropic(base_url=server.base_url, api_key=KEY, max_retries=0)
    with client.messages.stream(model="tiny", max_tokens=LONG, messages=[{"role": "user", "content": "Go."}],
                                extra_body={"ignore_eos": True}) as stream:
        message_id = stream.response.headers["x-request-id"]
        assert stream.response.headers["request-id"] == message_id
        events = iter(stream)
        for event in events:
            if event.type == "content_block_delta":
                break
        assert cancel(server, message_id).json()["api"] == "messages"
        rest = list(events)
        message = stream.get_final_message()
    delta = [e for e in rest if e.type == "message_delta"][0]
    assert delta.delta.stop_reason == "end_turn"
    assert delta.delta.stop_details.type == "cancelled"
    assert rest[-1].type == "message_stop"
    assert message.id == message_id and message.stop_reason == "end_turn"
    assert message.content[0].text and 0 < message.usage.output_tokens < LONG


def test_cancel_is_not_a_disconnect_and_needs_the_key(server):
    before = running(server)["cancelled_total"]
    # a client that goes away: its request ends, uncounted as a cancel
    with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", headers=AUTH, timeout=30, json={
            "model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": LONG,
            "ignore_eos": True, "stream": True}) as r:
        request_id = r.headers["x-request-id"]
        wait_running(server, request_id)
    deadline = time.monotonic() + 10
    while any(e["id"] == request_id for e in running(server)["data"]):
        assert time.monotonic() < deadline, "the disconnected request still runs"
        time.sleep(0.05)
    assert running(server)["cancelled_total"] == before
    assert cancel(server, request_id).status_code == 404
    # the operator routes are behind --api-key
    assert httpx.get(f"{server.base_url}/v1/requests", timeout=10).status_code == 401
    assert httpx.post(f"{server.base_url}/v1/requests/{request_id}/cancel", timeout=10).status_code == 401
    missing = cancel(server, "chatcmpl-nonexistent")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "request_not_found"
