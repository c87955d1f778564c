"""--engine-process: the engine in a child process, end to end through real servers.

What works with the engine in-process works the same (a handful of the OpenAI tests run here again,
against a server whose engine is a child process, and its greedy output is the in-process engine's);
output constraints cross as specs and are compiled in the engine process; a client that goes away
frees its slot there. Killing the engine process during 8 streams ends every stream with its API's
well-formed error, /health turns 503 with the reason then 200 once a new engine process is up, the
restart is counted on /metrics, the next request succeeds, and no engine process outlives the server.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import threading
import time

import anthropic
import httpx
import openai
import pytest

# Run again here, against the engine-process servers below (the fixtures of the same names).
from test_server_openai import (  # noqa: F401
    test_chat_non_stream,
    test_chat_stream_matches_non_stream,
    test_completions_string_batch_and_token_prompts,
    test_disconnect_mid_stream_frees_the_slot,
    test_eight_concurrent_streams_equal_solo_runs,
    test_max_tokens_gives_length,
    test_scripted_reply_exact_through_server,
    test_stop_strings_across_tokens_never_emitted,
    test_tools_reach_the_chat_template,
)

PROCESS = ("--engine-process",)


@pytest.fixture(scope="module")
def qwen3_server(start_server, tiny_qwen3):
    return start_server(tiny_qwen3, "--served-model-name", "tiny-qwen3", "alias-q", "--max-num-seqs", "16", *PROCESS)


@pytest.fixture(scope="module")
def scripted_server(start_server, scripted_qwen3):
    return start_server(scripted_qwen3, "--trust-remote-code", "--served-model-name", "scripted", *PROCESS)


@pytest.fixture(scope="module")
def thread_server(start_server, tiny_qwen3):
    """The same model with the engine in the API process, to compare with."""
    return start_server(tiny_qwen3, "--served-model-name", "tiny-qwen3", "--max-num-seqs", "16")


def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=60)


def chat(server, content: str, **kw):
    return client(server).chat.completions.create(
        model="tiny-qwen3", messages=[{"role": "user", "content": content}], **kw)


def test_health_names_the_engine_process(qwen3_server):
    engine = qwen3_server.health()["engine"]
    assert engine["state"] == "ready" and engine["restarts"] == 0 and engine["problem"] is None
    assert engine["pid"] not in (None, qwen3_server.proc.pid) and _running(engine["pid"])


def test_the_engine_process_memory_is_seen(qwen3_server):
    """The weights live in the engine process: /health, /v1/status and the memory guardrail see its
    memory (reported by that process), not only the API process's."""
    chat(qwen3_server, "count", max_tokens=4)
    deadline = time.monotonic() + 10
    while (memory := qwen3_server.health()["engine"]["memory"]) is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert memory is not None and memory["rss_bytes"] > 0 and memory["mlx_active_bytes"] > 0
    httpx.get(f"{qwen3_server.base_url}/health/diagnostics", timeout=10)  # takes a fresh guard reading
    status = httpx.get(f"{qwen3_server.base_url}/v1/status", timeout=10).json()
    assert status["models"][0]["engine_process_memory"]["rss_bytes"] > 0
    guard = status["memory"]["guard"]
    assert guard["enabled"] and guard["engine_process_bytes"] > 0
    assert guard["process_bytes"] >= guard["engine_process_bytes"] + status["memory"]["rss_bytes"] // 2


def test_greedy_output_is_the_in_process_engines(qwen3_server, thread_server):
    kw = dict(max_tokens=24, temperature=0, logprobs=True, top_logprobs=3)
    here, there = chat(qwen3_server, "Tell me about cats.", **kw), chat(thread_server, "Tell me about cats.", **kw)
    assert here.choices[0].message.content == there.choices[0].message.content
    assert here.usage.completion_tokens == there.usage.completion_tokens
    ours, theirs = here.choices[0].logprobs.content, there.choices[0].logprobs.content
    assert [t.token for t in ours] == [t.token for t in theirs]
    assert [t.logprob for t in ours] == pytest.approx([t.logprob for t in theirs], abs=1e-4)


def test_n_and_logprobs_cross(qwen3_server):
    resp = chat(qwen3_server, "Hello!", max_tokens=10, n=3, temperature=1.0, seed=7, logprobs=True, top_logprobs=2)
    assert [c.index for c in resp.choices] == [0, 1, 2]
    for choice in resp.choices:
        tokens = choice.logprobs.content
        assert tokens and all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in tokens)
    assert resp.usage.completion_tokens == sum(len(c.logprobs.content) for c in resp.choices)


def test_json_schema_is_compiled_in_the_engine_process(qwen3_server):
    schema = {"type": "object", "properties": {"color": {"enum": ["red", "green"]}, "n": {"enum": [1, 2, 3]}},
              "required": ["color", "n"], "additionalProperties": False}
    for stream in (False, True):
        kw = dict(max_tokens=60, temperature=1.0,
                  response_format={"type": "json_schema", "json_schema": {"name": "pick", "schema": schema}})
        if stream:
            text = "".join(c.choices[0].delta.content or "" for c in chat(qwen3_server, "Pick.", stream=True, **kw)
                           if c.choices)
        else:
            text = chat(qwen3_server, "Pick.", **kw).choices[0].message.content
        value = json.loads(text)
        assert value["color"] in ("red", "green") and value["n"] in (1, 2, 3)


def test_a_bad_grammar_is_400_before_the_engine(qwen3_server):
    with pytest.raises(openai.BadRequestError) as err:
        chat(qwen3_server, "x", max_tokens=4, extra_body={"guided_grammar": "start: ((("})
    assert "cannot be compiled" in err.value.message


def test_one_regex_for_several_prompts(qwen3_server):
    resp = client(qwen3_server).completions.create(model="tiny-qwen3", prompt=["a b", "c d", "e f"], max_tokens=6,
                                                   temperature=1.0, extra_body={"guided_regex": "[xy]+"})
    assert len(resp.choices) == 3 and all(set(c.text) <= {"x", "y"} and c.text for c in resp.choices)


# -- crash isolation -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def crash_server(start_server, tiny_qwen3):
    return start_server(tiny_qwen3, "--served-model-name", "tiny-qwen3", "--max-num-seqs", "16",
                        "--engine-restarts", "2", *PROCESS)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _chat_stream(server, i: int, first: threading.Event) -> None:
    stream = chat(server, f"Stream {i}, go on.", max_tokens=3500, temperature=1.0, stream=True,
                  extra_body={"ignore_eos": True})
    for _ in stream:
        first.set()


def _anthropic_stream(server, i: int, first: threading.Event) -> None:
    c = anthropic.Anthropic(base_url=server.base_url, api_key="unused", max_retries=0, timeout=60)
    with c.messages.stream(model="tiny-qwen3", max_tokens=3500, messages=[{"role": "user", "content": "Go."}],
                           extra_body={"ignore_eos": True}) as stream:
        for _ in stream:
            first.set()


def _responses_stream(server, i: int, first: threading.Event) -> None:
    stream = client(server).responses.create(model="tiny-qwen3", input="Go on.", max_output_tokens=3500,
                                             stream=True, extra_body={"ignore_eos": True})
    for event in stream:
        first.set()
        if event.type in ("response.failed", "error"):
            raise RuntimeError(f"responses stream ended with {event.type}: {event}")


def test_killing_the_engine_process_mid_stream(crash_server):
    server = crash_server
    old_pid = server.health()["engine"]["pid"]
    kinds = [_chat_stream] * 6 + [_anthropic_stream, _responses_stream]
    firsts = [threading.Event() for _ in kinds]
    errors: list = [None] * len(kinds)

    def run(i: int) -> None:
        try:
            kinds[i](server, i, firsts[i])
            errors[i] = "the stream ended without an error"
        except Exception as exc:  # what each SDK raises on its API's error event
            errors[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(kinds))]
    for t in threads:
        t.start()
    for first in firsts:
        assert first.wait(60), "a stream produced nothing"
    assert server.health()["engine"]["running"] == len(kinds)
    os.kill(old_pid, signal.SIGKILL)
    for t in threads:
        t.join(30)
    for i, exc in enumerate(errors):
        assert isinstance(exc, (openai.APIError, anthropic.APIError, RuntimeError)), (i, exc)
        assert "the engine process died (killed by SIGKILL)" in str(exc), (i, exc)
    assert isinstance(errors[6], anthropic.APIError)
    assert isinstance(errors[7], RuntimeError) and "response.failed" in str(errors[7])

    seen_down, deadline = None, time.monotonic() + 60
    while time.monotonic() < deadline:
        resp = httpx.get(f"{server.base_url}/health", timeout=5)
        if resp.status_code == 503:
            seen_down = resp.json()
        elif seen_down is not None:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"/health did not recover: {resp.status_code} {resp.text}")
    assert "the engine process died (killed by SIGKILL)" in seen_down["reason"]
    engine = resp.json()["engine"]
    assert engine["restarts"] == 1 and engine["pid"] != old_pid and engine["state"] == "ready"
    assert not _running(old_pid)
    metrics = httpx.get(f"{server.base_url}/metrics", timeout=5).text
    assert "vllm_mlx_engine_restarts_total 1.0" in metrics

    after = chat(server, "Hello again.", max_tokens=8, temperature=0)
    assert after.choices[0].finish_reason in ("stop", "length") and after.usage.completion_tokens >= 1
    new_pid = engine["pid"]
    server.stop()
    deadline = time.monotonic() + 15
    while _running(new_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _running(new_pid), "the engine process outlived the server"


def test_the_engine_process_exits_when_the_server_is_killed(start_server, tiny_qwen3):
    server = start_server(tiny_qwen3, *PROCESS)
    pid = server.health()["engine"]["pid"]
    server.proc.kill()
    server.proc.wait()
    deadline = time.monotonic() + 15
    while _running(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _running(pid), "the engine process outlived a killed server"


def test_one_engine_process_per_model_and_unloading_ends_it(start_server, tiny_qwen3, tiny_llama):
    server = start_server("--models", f"q={tiny_qwen3}", f"l={tiny_llama}", "--model-ttl", "2", *PROCESS)
    c = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=60)
    pids = set()
    for name in ("q", "l"):
        assert c.chat.completions.create(model=name, messages=[{"role": "user", "content": "Hi"}],
                                         max_tokens=4).model == name
        engines = {m["name"]: m["engine"] for m in server.health()["models"]["models"]}
        pids.add(engines[name]["pid"])
    assert len(pids) == 2 and None not in pids
    deadline = time.monotonic() + 30  # idle for 2 s: unloaded, its engine process gone
    while any(_running(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_running(p) for p in pids)
    assert {m["name"]: m["state"] for m in server.health()["models"]["models"]} == {"q": "unloaded", "l": "unloaded"}


def test_vision_requests_cross_as_pixels(start_server, models_dir):
    """Images are prepared here and cross as processed pixels; the engine process encodes them: the
    answer is the in-process engine's, and the same request again reuses the engine's prefix cache."""
    from vllm_mlx_testing.vision_models import build_tiny_vision_model, data_url, random_image

    folder = build_tiny_vision_model(models_dir / "tiny-qwen2-vl-ep", "qwen2_vl")
    here = start_server(folder, "--served-model-name", "vl", *PROCESS)
    there = start_server(folder, "--served-model-name", "vl")
    url = data_url(random_image(7))
    messages = [{"role": "user", "content": [{"type": "text", "text": "What is in this picture?"},
                                             {"type": "image_url", "image_url": {"url": url}}]}]

    def ask(server, **kw):
        return client(server).chat.completions.create(model="vl", messages=messages, max_tokens=12, temperature=0,
                                                      **kw)

    ours, theirs = ask(here), ask(there)
    assert ours.choices[0].message.content == theirs.choices[0].message.content
    assert ours.usage.prompt_tokens == theirs.usage.prompt_tokens > 20  # the image's placeholder tokens
    streamed = "".join(c.choices[0].delta.content or "" for c in ask(here, stream=True) if c.choices)
    assert streamed == ours.choices[0].message.content
    engine = here.health()["engine"]  # the second time: the prompt's keys/values (image hash in the key) reused
    assert engine["vision_cache"]["misses"] == 1 and engine["prefix_cache"]["hit_tokens"] > 0


def test_past_its_restarts_the_engine_stays_down_and_says_so(start_server, tiny_qwen3):
    server = start_server(tiny_qwen3, "--served-model-name", "tiny-qwen3", "--engine-restarts", "0", *PROCESS)
    os.kill(server.health()["engine"]["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        resp = httpx.get(f"{server.base_url}/health", timeout=5)
        if resp.status_code == 503 and "not restarted" in resp.json().get("reason", ""):
            break
        time.sleep(0.1)
    assert resp.status_code == 503 and resp.json()["engine"]["state"] == "failed", resp.text
    with pytest.raises(openai.APIStatusError) as err:
        chat(server, "Hello?", max_tokens=4)
    assert err.value.status_code == 503


def test_requests_and_outputs_cross_unchanged():
    """The message conversions both ways, fields that rarely appear included."""
    import numpy as np

    from vllm_mlx.engine.constraints import StructuredSpec
    from vllm_mlx.engine.ipc_messages import (AddRequests, Codec, StepOutputs, generation_output, generation_request,
                                              output_msg, request_msg)
    from vllm_mlx.engine.config import EngineStats
    from vllm_mlx.engine.multimodal import MediaItem, MultimodalPrompt
    from vllm_mlx.engine.request import (FinishReason, GenerationOutput, GenerationRequest, SamplingParams,
                                         TokenLogprob)

    codec = Codec()
    item = MediaItem.make("image", np.arange(24, dtype=np.float32).reshape(2, 12), (1, 2, 4), merge_size=2)
    request = GenerationRequest(
        "r1", [5, 6, 7, 8], SamplingParams(max_tokens=9, temperature=0.5, seed=3, stop=("x",), n=2, logprobs=True,
                                           top_logprobs=2, logit_bias=((5, -1.5),), max_thinking_tokens=4),
        constraint=StructuredSpec(json_schema={"type": "object"}), constraint_after=(9,), keep_special_tokens=True,
        reasoning_markers=((1,), (2, 3)), starts_in_reasoning=True,
        multimodal=MultimodalPrompt([item], [5, -7, -8, 8]), checkpoints=(2,))
    sent = codec.commands.decode(codec.encode(AddRequests([request_msg(request)]))).requests[0]
    back = generation_request(sent, constraint=request.constraint)
    mm = back.multimodal
    assert (back.request_id, back.prompt_token_ids, back.sampling, back.constraint_after, back.keep_special_tokens,
            back.reasoning_markers, back.starts_in_reasoning, back.checkpoints) == \
        (request.request_id, request.prompt_token_ids, request.sampling, request.constraint_after, True,
         request.reasoning_markers, True, request.checkpoints)
    assert sent.constraint == request.constraint and mm.key_ids == [5, -7, -8, 8]
    got = mm.items[0]
    assert (got.kind, got.grid_thw, got.num_tokens, got.digest) == (item.kind, item.grid_thw, item.num_tokens,
                                                                    item.digest)
    assert np.array_equal(got.pixel_values, item.pixel_values) and got.pixel_values.dtype == np.float32

    out = GenerationOutput("r1", 1, "hé", [5, 6], FinishReason.STOP, 4, 2, 1, None, 500,
                           [TokenLogprob(5, -0.5, ((5, -0.5), (6, -1.0))), TokenLogprob(6, -0.1)], "x")
    failed = GenerationOutput("r2", finish_reason=FinishReason.ERROR, error="bad grammar", error_status=400)
    event = codec.events.decode(codec.encode(StepOutputs([output_msg(out), output_msg(failed)], EngineStats(steps=3))))
    assert [generation_output(m) for m in event.outputs] == [out, failed] and event.stats.steps == 3


def test_an_engine_process_set_up_there_and_not_restarted(tiny_qwen3):
    """``setup`` (what a distributed rank 0 uses: the engine process sets up its own engine) and
    ``on_death``: a dead engine process is reported once, with its reason, instead of restarted."""
    from vllm_mlx.config import ServerConfig
    from vllm_mlx.engine.config import EngineConfig
    from vllm_mlx.engine.process_client import EngineProcess
    from vllm_mlx.engine.request import GenerationRequest, SamplingParams
    from vllm_mlx.models.loader import load_metadata
    from vllm_mlx.engine.process_main import EngineSetup
    from vllm_mlx.serving.model_setup import model_loader

    outputs, deaths = [], []
    engine = EngineProcess(lambda: load_metadata(str(tiny_qwen3)), None, EngineConfig(), outputs.extend,
                           max_restarts=3, setup=functools.partial(EngineSetup, model_loader(ServerConfig(), tiny_qwen3)),
                           on_death=deaths.append)
    try:
        engine.start(timeout=120)
        engine.add_request(GenerationRequest("r1", [1, 2, 3], SamplingParams(max_tokens=4, temperature=0.0)))
        deadline = time.monotonic() + 60
        while not any(o.finish_reason for o in outputs) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sum(len(o.token_ids) for o in outputs) == 4  # the engine it set up serves
        engine.add_request(GenerationRequest("r2", [1, 2, 3], SamplingParams(max_tokens=100000, temperature=0.0)))
        time.sleep(0.5)
        os.kill(engine.pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while not deaths and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)  # a restart would be under way by now (its backoff is 0.5 s)
        assert deaths == ["killed by SIGKILL"]
        assert [o.error for o in outputs if o.request_id == "r2" and o.error] == [
            "the engine process died (killed by SIGKILL)"]
        assert not engine.alive and engine.restarts == 0 and engine.stats.state == "failed"
    finally:
        engine.shutdown(5.0)
