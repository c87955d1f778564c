"""Multi-model serving through the real server: allow-list, routing by `model` in every API,
lazy load, idle unload and reload, memory-bound eviction and 503 + Retry-After."""

from __future__ import annotations

import threading
import time

import anthropic
import httpx
import openai
import pytest

REPLY_A = "I am model A, at your service."
REPLY_B = "Model B speaking here."


@pytest.fixture(scope="module")
def two_scripted(models_dir):
    from vllm_mlx_testing import build_scripted_model

    return (build_scripted_model(models_dir / "multi-a", [], REPLY_A, "qwen3"),
            build_scripted_model(models_dir / "multi-b", [], REPLY_B, "llama"))


@pytest.fixture(scope="module")
def broken_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("broken-model")
    (folder / "config.json").write_text('{"model_type": "no-such-architecture"}')
    return folder


@pytest.fixture(scope="module")
def multi_server(start_server, two_scripted, broken_model):
    a, b = two_scripted
    return start_server("--models", f"model-a,alias-a={a}", f"model-b={b}", f"broken={broken_model}",
                        "--trust-remote-code", "--model-ttl", "2")


def test_model_specs_forms_and_errors():
    from vllm_mlx.models.model_specs import ModelSpec, ModelSpecError, parse_model_specs

    assert parse_model_specs(["a=/m/a", "b,b2,b3=org/b", {"name": "c", "model": "/m/c", "aliases": ["c2"]},
                              {"d": "/m/d"}]) == [
        ModelSpec("a", "/m/a"), ModelSpec("b", "org/b", ("b2", "b3")), ModelSpec("c", "/m/c", ("c2",)),
        ModelSpec("d", "/m/d")]
    for bad in (["a"], ["=x"], ["a="], [{"name": "a"}], [3], ["a=x", "b,a=y"]):
        with pytest.raises(ModelSpecError):
            parse_model_specs(bad)


def test_cli_rejects_bad_models_flags(tiny_qwen3):
    from test_cli import run_cli

    result = run_cli("serve", "--models", "just-a-name")
    assert result.returncode != 0 and "--models: a models entry must be NAME=MODEL" in result.stderr
    result = run_cli("serve", str(tiny_qwen3), "--models", f"q={tiny_qwen3}")
    assert result.returncode != 0 and "either a MODEL argument or --models" in result.stderr
    result = run_cli("serve", "--models", f"q={tiny_qwen3}", "--served-model-name", "x")
    assert result.returncode != 0 and "--served-model-name applies to a single MODEL" in result.stderr
    result = run_cli("serve", str(tiny_qwen3), "--model-ttl", "60")
    assert result.returncode != 0 and "--model-ttl applies to multi-model serving" in result.stderr
    result = run_cli("serve", "--models", f"q={tiny_qwen3.parent / 'missing'}")
    assert result.returncode == 2 and "is not a model folder" in result.stderr


def _models(server) -> dict[str, dict]:
    return {m["name"]: m for m in server.health()["models"]["models"]}


def _chat(server, model: str, **kw) -> openai.types.chat.ChatCompletion:
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0)
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], **kw)


def _wait(predicate, timeout: float = 30.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def test_models_listed_unloaded_then_loaded_lazily_and_routed_in_every_api(multi_server, two_scripted):
    server = multi_server
    listed = httpx.get(f"{server.base_url}/v1/models").json()["data"]
    assert {m["id"]: (m["root"], m["loaded"]) for m in listed} == {
        "model-a": ("model-a", False), "alias-a": ("model-a", False), "model-b": ("model-b", False),
        "broken": ("broken", False)}
    assert {n: m["state"] for n, m in _models(server).items()} == {
        "model-a": "unloaded", "model-b": "unloaded", "broken": "unloaded"}

    chat = _chat(server, "alias-a")  # an alias reaches its model; responses name the model
    assert chat.model == "model-a" and chat.choices[0].message.content == REPLY_A
    assert {n: m["state"] for n, m in _models(server).items()} == {
        "model-a": "loaded", "model-b": "unloaded", "broken": "unloaded"}

    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x")
    stream = client.chat.completions.create(model="model-b", messages=[{"role": "user", "content": "hi"}],
                                            stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == REPLY_B
    completion = client.completions.create(model="model-a", prompt="Say something", max_tokens=40)
    assert completion.model == "model-a" and completion.choices[0].text == REPLY_A
    response = client.responses.create(model="model-b", input="hi")
    assert response.model == "model-b" and response.output_text == REPLY_B
    message = anthropic.Anthropic(base_url=server.base_url, api_key="x").messages.create(
        model="model-a", max_tokens=64, messages=[{"role": "user", "content": "hi"}])
    assert message.model == "model-a" and message.content[0].text == REPLY_A
    listed = httpx.get(f"{server.base_url}/v1/models").json()["data"]
    assert {m["id"]: m["loaded"] for m in listed} == {"model-a": True, "alias-a": True, "model-b": True,
                                                      "broken": False}
    metrics = httpx.get(f"{server.base_url}/metrics").text
    assert 'vllm_mlx_model_loaded{model="model-a"} 1.0' in metrics
    # running requests of every loaded model are listed, and cancelled, by their id
    endless = client.chat.completions.create(model="model-b", messages=[{"role": "user", "content": "hi"}],
                                             stream=True, max_tokens=2000, extra_body={"ignore_eos": True})
    chunks = iter(endless)
    request_id = next(chunks).id
    listed = httpx.get(f"{server.base_url}/v1/requests").json()["data"]
    assert [(e["id"], e["model"]) for e in listed] == [(request_id, "model-b")]
    assert httpx.post(f"{server.base_url}/v1/requests/{request_id}/cancel").status_code == 200
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["cancelled"]
    # /v1/capabilities describes the model it is asked about (every model goes through the registry)
    caps = httpx.get(f"{server.base_url}/v1/capabilities", params={"model": "alias-a"}).json()
    assert caps["model"]["id"] == "model-a" and caps["model"]["aliases"] == ["alias-a"]
    assert caps["model"]["source"] == str(two_scripted[0])
    assert httpx.get(f"{server.base_url}/v1/capabilities").status_code == 400  # which one?


def test_unknown_model_is_404_and_never_loaded(multi_server, tiny_qwen3):
    server = multi_server
    for name in ("default", str(tiny_qwen3), "some-org/some-model"):
        with pytest.raises(openai.NotFoundError) as err:
            _chat(server, name)
        assert err.value.body["code"] == "model_not_found"
    with pytest.raises(anthropic.NotFoundError) as aerr:
        anthropic.Anthropic(base_url=server.base_url, api_key="x").messages.create(
            model=str(tiny_qwen3), max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    assert aerr.value.body["type"] == "error" and aerr.value.body["error"]["type"] == "not_found_error"
    assert all(m["loads"] == 0 or m["name"] != "broken" for m in _models(server).values())
    assert "tiny-qwen3" not in server.log()  # nothing was resolved or loaded for the unknown names


def test_model_that_fails_to_load_answers_500_and_others_keep_serving(multi_server):
    server = multi_server
    with pytest.raises(openai.InternalServerError) as err:
        _chat(server, "broken")
    assert err.value.body["code"] == "model_load_failed"
    broken = _models(server)["broken"]
    assert broken["state"] == "unloaded" and "No safetensors found" in broken["last_error"]
    assert _chat(server, "model-b").choices[0].message.content == REPLY_B


def test_idle_model_unloads_after_ttl_and_reloads(multi_server):
    server = multi_server
    assert _chat(server, "model-a").choices[0].message.content == REPLY_A
    loads = _models(server)["model-a"]["loads"]
    assert _wait(lambda: _models(server)["model-a"]["state"] == "unloaded", timeout=20)
    assert _models(server)["model-a"]["unloads"] >= 1
    assert {m["id"]: m["loaded"] for m in httpx.get(f"{server.base_url}/v1/models").json()["data"]}["model-a"] is False
    # Once every model is unloaded, their arrays are gone too.
    assert _wait(lambda: all(m["state"] == "unloaded" for m in _models(server).values()), timeout=20)
    assert server.health()["models"]["active_memory_bytes"] < 2**16
    assert _chat(server, "model-a").choices[0].message.content == REPLY_A  # loaded again on demand
    assert _models(server)["model-a"]["loads"] == loads + 1


def test_memory_bound_evicts_least_recently_used_and_answers_503_when_all_in_use(start_server, tiny_qwen3,
                                                                                 tiny_llama):
    sizes = [sum(f.stat().st_size for f in p.glob("*.safetensors")) for p in (tiny_qwen3, tiny_llama)]
    bound_gb = max(sizes) * 1.2 / 2**30  # room for either model, not both
    assert sum(sizes) > max(sizes) * 1.2
    server = start_server("--models", f"q={tiny_qwen3}", f"l={tiny_llama}", "--models-memory-gb", f"{bound_gb:.12f}")
    assert _chat(server, "q", max_tokens=4).model == "q"
    assert _chat(server, "l", max_tokens=4).model == "l"
    models = _models(server)
    assert models["q"]["state"] == "unloaded" and models["q"]["unloads"] == 1 and models["l"]["state"] == "loaded"

    # While "l" is generating, "q" cannot be loaded: 503 with Retry-After, and "l" keeps running.
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0)
    started, finished = threading.Event(), {}

    def long_stream():
        stream = client.chat.completions.create(model="l", messages=[{"role": "user", "content": "go"}],
                                                max_tokens=1500, stream=True, extra_body={"ignore_eos": True})
        text = ""
        for chunk in stream:
            started.set()
            text += (chunk.choices[0].delta.content or "") if chunk.choices else ""
        finished["text"] = text

    worker = threading.Thread(target=long_stream)
    worker.start()
    assert started.wait(60)
    response = httpx.post(f"{server.base_url}/v1/chat/completions", timeout=30,
                          json={"model": "q", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
    worker.join(120)
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "5"
    assert response.json()["error"]["code"] == "model_capacity"
    assert finished.get("text"), "the running stream was not disturbed"
    assert _chat(server, "q", max_tokens=4).model == "q"  # once "l" is idle, it gives way
    assert _models(server)["l"]["state"] == "unloaded"


def test_preload_models_loads_at_startup(start_server, tiny_qwen3):
    server = start_server("--models", f"q={tiny_qwen3}", "--preload-models")
    assert _models(server)["q"]["state"] == "loaded"
    response = httpx.get(f"{server.base_url}/v1/cache/stats")  # several models could be meant: name one
    assert response.status_code == 400 and response.json()["error"]["param"] == "model"
    assert httpx.get(f"{server.base_url}/v1/cache/stats", params={"model": "q"}).json()["enabled"] is True


def test_sigterm_drains_every_loaded_model(start_server, tmp_path_factory, tiny_qwen3):
    import json
    import signal

    from vllm_mlx.models.demo import ensure_demo_model

    demo = ensure_demo_model(tmp_path_factory.mktemp("demo"))  # slow enough to outlast the drain window
    server = start_server("--models", f"demo={demo}", f"q={tiny_qwen3}", "--shutdown-timeout", "1.5")
    lines: list[str] = []
    started = threading.Event()

    def long_stream():
        body = {"model": "demo", "messages": [{"role": "user", "content": "go"}], "max_tokens": 3000,
                "temperature": 0, "ignore_eos": True, "stream": True}
        with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json=body, timeout=60) as resp:
            for line in resp.iter_lines():
                if line:
                    lines.append(line)
                    if len(lines) >= 3:
                        started.set()

    assert _chat(server, "q", max_tokens=4).model == "q"  # a second loaded model, idle
    worker = threading.Thread(target=long_stream)
    worker.start()
    assert started.wait(60)
    signalled = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    worker.join(30)
    assert time.monotonic() - signalled < 15
    assert server.proc.wait(30) in (0, -signal.SIGTERM)
    chunks = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    reasons = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert reasons == ["abort"] and lines[-1] == "data: [DONE]"  # ended with a final event, not cut
    log = server.log()
    assert "drain time is over" in log and "model demo unloaded" in log and "model q unloaded" in log
