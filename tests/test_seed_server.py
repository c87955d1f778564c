"""The routes and request fields users of the earlier vllm-mlx 0.2.x rely on (tests/data/seed_cli.md), and
the serve features built for them (--localhost, --timeout, the memory guardrail), against real server
processes with the official SDKs: GET /v1/status, GET /health/diagnostics, GET /v1/cache/stats,
DELETE /v1/cache, GET /v1/capabilities, enable_thinking, chat_template_kwargs, max_thinking_tokens,
message.reasoning (in answers, and accepted in history), audio short names (whisper-large-v3 ... kokoro)."""

from __future__ import annotations

import threading
import time

import anthropic
import httpx
import openai
import pytest

THINK = [{"role": "user", "content": "please think"}]


@pytest.fixture(scope="module")
def server(start_server, scripted_qwen3):
    # --localhost forces 127.0.0.1 over --host; a warn threshold every process is above
    return start_server(scripted_qwen3, "--trust-remote-code", "--served-model-name", "scripted", "--host", "0.0.0.0",
                        "--localhost", "--memory-warn-threshold", "0.0001", "--memory-limit-threshold", "99",
                        "--memory-monitor-interval", "0.2")


@pytest.fixture(scope="module")
def oai(server):
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="none", max_retries=0)


def get(server, path: str) -> httpx.Response:
    return httpx.get(f"{server.base_url}{path}", timeout=30)


def log(server) -> str:
    return server.log_path.read_text()


def test_localhost_binds_loopback_only(server):
    assert f"Uvicorn running on http://127.0.0.1:{server.port}" in log(server)
    assert get(server, "/v1/capabilities").status_code == 200  # GET /v1/capabilities


def test_status_reports_engine_tokens_memory_cache_and_running_requests(server, oai):
    oai.chat.completions.create(model="scripted", messages=THINK, max_tokens=8)
    body = get(server, "/v1/status").json()
    assert body["object"] == "status" and body["uptime_s"] > 0 and body["version"]
    model = body["models"][0]
    assert model["model"] == "scripted" and model["state"] == "ready" and model["steps"] > 0
    assert body["totals"]["prompt_tokens"] > 0 and body["totals"]["generation_tokens"] > 0
    assert {"running", "waiting", "requests_finished"} <= set(body["totals"])
    assert body["memory"]["rss_bytes"] > 0 and body["memory"]["guard"]["action"] == "warn"
    assert model["cache"]["prefix"]["entries"] >= 0 and body["requests"] == []
    # a running request shows up with its id and tokens
    stream = oai.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "go on"}],
                                         max_tokens=3000, stream=True, extra_body={"ignore_eos": True})
    request_id = stream.response.headers["x-request-id"]
    next(iter(stream))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        running = get(server, "/v1/status").json()["requests"]
        if running and running[0]["id"] == request_id:
            break
        time.sleep(0.05)
    assert running and running[0]["id"] == request_id and running[0]["prompt_tokens"] > 0
    stream.close()


def test_diagnostics_checks_template_eos_dtype_memory(server):
    r = get(server, "/health/diagnostics")
    body = r.json()
    assert r.status_code == 200 and body["version"]
    checks = body["checks"]
    assert checks["chat_template"]["status"] == "ok" and checks["eos"]["status"] == "ok"
    assert "float" in checks["dtype"]["detail"] and checks["engine"]["status"] == "ok"
    assert checks["memory"]["status"] == "warn"  # above the warn threshold of this server
    assert body["status"] == "degraded"


def test_memory_warn_logs_and_serves(server, oai):
    assert "memory guard: process memory at" in log(server) and "above the warn threshold" in log(server)
    answer = oai.chat.completions.create(model="scripted", messages=THINK)
    assert answer.choices[0].message.content == "Step one: relax."


def test_cache_stats_and_delete_cache(server, oai):
    oai.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "weather " * 40}],
                                max_tokens=4)
    assert get(server, "/v1/cache/stats").json()["entries"] > 0  # GET /v1/cache/stats
    r = httpx.delete(f"{server.base_url}/v1/cache", timeout=30)  # DELETE /v1/cache
    assert r.status_code == 200 and r.json()["cleared"] is True and r.json()["before"]["entries"] > 0
    assert get(server, "/v1/cache/stats").json()["entries"] == 0


def test_message_reasoning_is_an_alias_of_reasoning_content(server, oai):
    message = oai.chat.completions.create(model="scripted", messages=THINK).choices[0].message
    extra = message.model_extra
    assert extra["reasoning"] == extra["reasoning_content"] == "The user wants a plan."
    chunks = list(oai.chat.completions.create(model="scripted", messages=THINK, stream=True))
    streamed = "".join(c.choices[0].delta.model_extra.get("reasoning") or "" for c in chunks if c.choices)
    assert streamed == "The user wants a plan."


def test_message_reasoning_is_accepted_in_history(server, oai):
    def prompt_tokens(**assistant) -> int:
        history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok", **assistant}]
        return oai.chat.completions.create(model="scripted", messages=history, max_tokens=4).usage.prompt_tokens

    plain = prompt_tokens()
    assert prompt_tokens(reasoning="weighing the options") == prompt_tokens(reasoning_content="weighing the options")
    assert prompt_tokens(reasoning="weighing the options") > plain  # the template rendered it


def test_enable_thinking_and_chat_template_kwargs(server, oai):
    for extra in ({"enable_thinking": False}, {"chat_template_kwargs": {"enable_thinking": False}}):
        message = oai.chat.completions.create(model="scripted", messages=THINK, extra_body=extra).choices[0].message
        assert "reasoning" not in (message.model_extra or {}), extra  # not thinking: nothing parsed as reasoning
    thinking = oai.chat.completions.create(model="scripted", messages=THINK, extra_body={"enable_thinking": True})
    assert thinking.choices[0].message.model_extra["reasoning"]


def test_max_thinking_tokens_bounds_the_reasoning(server, oai):
    full = oai.chat.completions.create(model="scripted", messages=THINK).choices[0].message.model_extra["reasoning"]
    short = oai.chat.completions.create(model="scripted", messages=THINK, max_tokens=40,
                                        extra_body={"max_thinking_tokens": 2}).choices[0].message
    assert len(short.model_extra.get("reasoning", "")) < len(full)


@pytest.mark.parametrize("name", ["whisper-large-v3", "whisper-large-v3-turbo", "whisper-medium", "whisper-small",
                                  "parakeet", "parakeet-v3"])
def test_speech_to_text_short_names_say_how_to_serve_them(server, oai, name):
    with pytest.raises(openai.APIStatusError) as caught:
        oai.audio.transcriptions.create(model=name, file=("a.wav", b"RIFF0000WAVE"))
    error = caught.value.response.json()["error"]
    assert caught.value.status_code in (404, 501) and error["param"] in ("model", None)
    if caught.value.status_code == 404:
        assert "--stt-model" in error["message"] and "whisper-large-v3 are mapped" in error["message"]


@pytest.mark.parametrize("name", ["kokoro", "kokoro-4bit", "chatterbox", "vibevoice", "voxcpm"])
def test_text_to_speech_short_names_say_how_to_serve_them(server, oai, name):
    with pytest.raises(openai.APIStatusError) as caught:
        oai.audio.speech.create(model=name, input="hello", voice="af_heart")
    error = caught.value.response.json()["error"]
    assert caught.value.status_code in (404, 501) and error["message"]
    if caught.value.status_code == 404:
        assert f"'{name}' is a name of vllm-mlx 0.2.x: start the server with --tts-model" in error["message"]


# -- --timeout ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def slow_server(start_server, models_dir):
    from vllm_mlx_testing import build_tiny_model

    wide = build_tiny_model(models_dir / "seed-timeout-qwen3", hidden_size=512, num_hidden_layers=4,
                            num_attention_heads=8, num_key_value_heads=4, intermediate_size=1536)
    # a timeout well under the time the 3000-token requests take, however fast the engine gets
    return start_server(wide, "--served-model-name", "tiny", "--timeout", "0.25")


def test_timeout_ends_non_streamed_requests_with_504_in_each_api_shape(slow_server):
    base = slow_server.base_url
    oai = openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0)
    claude = anthropic.Anthropic(base_url=base, api_key="none", max_retries=0)
    go = [{"role": "user", "content": "go"}]
    calls = [
        (openai.APIStatusError, lambda: oai.chat.completions.create(
            model="tiny", messages=go, max_tokens=3000, extra_body={"ignore_eos": True})),
        (openai.APIStatusError, lambda: oai.completions.create(
            model="tiny", prompt="go", max_tokens=3000, extra_body={"ignore_eos": True})),
        (anthropic.APIStatusError, lambda: claude.messages.create(
            model="tiny", max_tokens=3000, messages=go, extra_body={"ignore_eos": True})),
    ]
    quick = 0  # answered soon after the timeout: then its generation must have been stopped
    for error, call in calls:
        started = time.monotonic()
        with pytest.raises(error) as caught:
            call()
        assert caught.value.status_code == 504
        quick += time.monotonic() - started < 10  # a starved machine can run a request out before the timer
        body = caught.value.response.json()
        if error is anthropic.APIStatusError:
            assert body["type"] == "error" and body["error"]["type"] == "timeout_error"
        else:
            assert body["error"]["code"] == "request_timeout" and "--timeout" in body["error"]["message"]
    deadline = time.monotonic() + 15  # the generations were stopped in the engine, not left running
    while time.monotonic() < deadline:
        status = httpx.get(f"{base}/v1/status").json()
        if not status["totals"]["running"] and not status["requests"]:
            break
        time.sleep(0.1)
    totals = status["totals"]
    assert totals["running"] == 0 and totals["waiting"] == 0 and status["requests"] == []
    assert totals["requests_aborted"] >= min(quick, 1), totals


def test_timeout_leaves_streams_alone(slow_server):
    oai = openai.OpenAI(base_url=f"{slow_server.base_url}/v1", api_key="none", max_retries=0)
    stream = oai.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "go"}],
                                         max_tokens=3000, stream=True, extra_body={"ignore_eos": True})
    started, chunks = time.monotonic(), 0
    for chunk in stream:
        chunks += 1
        if time.monotonic() - started > 2.5:  # well past --timeout, still streaming
            break
    stream.close()
    assert chunks > 1 and time.monotonic() - started > 2.5


# -- memory guardrail: reject-new and reduce-context -------------------------------------------------

GUARD_OVER = ["--memory-warn-threshold", "0.0001", "--memory-limit-threshold", "0.0002",
              "--memory-monitor-interval", "0.2"]


def test_reject_new_answers_503_in_each_api_shape(start_server, tiny_qwen3):
    server = start_server(tiny_qwen3, "--served-model-name", "tiny", "--memory-action", "reject-new", *GUARD_OVER)
    oai = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="none", max_retries=0)
    with pytest.raises(openai.APIStatusError) as caught:
        oai.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert caught.value.status_code == 503 and caught.value.response.headers["retry-after"]
    assert caught.value.response.json()["error"]["code"] == "memory_limit"
    claude = anthropic.Anthropic(base_url=server.base_url, api_key="none", max_retries=0)
    with pytest.raises(anthropic.APIStatusError) as caught:
        claude.messages.create(model="tiny", max_tokens=4, messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 503 and caught.value.response.json()["type"] == "error"
    assert caught.value.response.json()["error"]["type"] == "overloaded_error"
    status = httpx.get(f"{server.base_url}/v1/status").json()  # operators still see why
    assert status["memory"]["guard"]["level"] == "limit" and status["memory"]["guard"]["rejected"] >= 2
    diagnostics = httpx.get(f"{server.base_url}/health/diagnostics")
    assert diagnostics.status_code == 503 and diagnostics.json()["status"] == "unhealthy"
    assert "new requests get 503" in server.log_path.read_text()


def test_reduce_context_halves_the_context_of_new_requests(start_server, tiny_qwen3):
    server = start_server(tiny_qwen3, "--served-model-name", "tiny", "--max-model-len", "256",
                          "--memory-action", "reduce-context", *GUARD_OVER)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        status = httpx.get(f"{server.base_url}/v1/status").json()
        if status["models"] and status["models"][0]["max_model_len"] == 128:
            break
        time.sleep(0.1)
    assert status["models"][0]["max_model_len"] == 128 and status["memory"]["guard"]["context_reduced"]
    oai = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="none", max_retries=0)
    assert oai.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    with pytest.raises(openai.BadRequestError) as caught:  # fits 256, not the reduced 128
        oai.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=200)
    assert "128" in caught.value.response.json()["error"]["message"]


def test_concurrent_seed_fields_do_not_interfere(server, oai):
    results: list[str] = []

    def ask(extra):
        message = oai.chat.completions.create(model="scripted", messages=THINK, extra_body=extra).choices[0].message
        results.append("reasoning" if (message.model_extra or {}).get("reasoning") else "none")

    threads = [threading.Thread(target=ask, args=(e,)) for e in ({"enable_thinking": False}, {})]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["none", "reasoning"]


def test_diagnostics_report_batch_invariance_when_the_monitor_runs(start_server, tiny_qwen3):
    server = start_server(tiny_qwen3, "--served-model-name", "tiny", "--batch-divergence-monitor",
                          "--batch-divergence-interval", "0")
    body = httpx.get(f"{server.base_url}/health/diagnostics", timeout=30).json()
    check = body["checks"]["batch_invariance"]
    assert check["status"] in ("ok", "warn") and "batched" in check["detail"]
    assert body["status"] in ("healthy", "degraded")


def test_stt_short_name_serves_its_repo_and_answers_to_it(start_server, tiny_qwen3, models_dir, tmp_path_factory):
    """`--stt-model whisper-large-v3` loads the repo it names (here a tiny whisper put in a private Hugging
    Face cache under that repo id), and a request naming the short name is served, --strict-model-id too."""
    pytest.importorskip("mlx_audio", reason="the 'audio' extra is not installed")
    soundfile = pytest.importorskip("soundfile", reason="the 'audio' extra is not installed")
    import io
    import shutil

    import numpy as np
    from vllm_mlx_testing.audio_models import build_tiny_whisper

    hf_home = tmp_path_factory.mktemp("hf-home")
    repo = hf_home / "hub" / "models--mlx-community--whisper-large-v3-mlx"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(build_tiny_whisper(models_dir / "seed-whisper"), repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    server = start_server(tiny_qwen3, "--served-model-name", "tiny", "--stt-model", "whisper-large-v3",
                          "--strict-model-id", env={"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"})
    models = {m["id"]: m["kind"] for m in httpx.get(f"{server.base_url}/v1/models").json()["data"]}
    assert models.get("mlx-community/whisper-large-v3-mlx") == "transcription", models
    audio = io.BytesIO()
    soundfile.write(audio, (0.2 * np.sin(np.arange(16000) / 16000 * 2 * np.pi * 180)).astype(np.float32), 16000,
                    format="WAV")
    oai = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="none", max_retries=0)
    result = oai.audio.transcriptions.create(model="whisper-large-v3", file=("a.wav", audio.getvalue()),
                                             temperature=0.2)
    assert isinstance(result.text, str)
    with pytest.raises(openai.NotFoundError):  # strict: another name is still refused
        oai.audio.transcriptions.create(model="whisper-small", file=("a.wav", audio.getvalue()), temperature=0.2)


def test_status_and_diagnostics_with_several_models(start_server, tiny_qwen3):
    server = start_server("--models", f"small={tiny_qwen3}")
    before = httpx.get(f"{server.base_url}/v1/status").json()
    assert before["models"] == [] and before["totals"]["running"] == 0  # loaded on first use
    diagnostics = httpx.get(f"{server.base_url}/health/diagnostics")
    assert diagnostics.status_code == 200 and diagnostics.json()["checks"]["engine"]["status"] == "ok"
    oai = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="none", max_retries=0)
    oai.chat.completions.create(model="small", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    after = httpx.get(f"{server.base_url}/v1/status").json()
    assert [m["model"] for m in after["models"]] == ["small"] and after["totals"]["generation_tokens"] > 0
    assert httpx.delete(f"{server.base_url}/v1/cache", params={"model": "small"}).json()["model"] == "small"
    checks = httpx.get(f"{server.base_url}/health/diagnostics").json()["checks"]
    assert checks["chat_template"]["status"] == "ok" and checks["chat_template"]["detail"].startswith("small:")
