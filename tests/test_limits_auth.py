"""Request limits (413/400 in each API's shape, naming the limit) and the API key on every route."""

from __future__ import annotations

import anthropic
import httpx
import openai
import pytest
from starlette.testclient import TestClient

KEY = "sk-test-Zq8vN3kT1wP0"


@pytest.fixture(scope="module")
def server(start_server, tiny_qwen3):
    return start_server(tiny_qwen3, "--api-key", KEY, "--log-level", "debug", "--max-messages", "3",
                        "--max-tools", "2", "--max-tokens-cap", "8", "--max-prompt-tokens", "40",
                        "--max-prompts", "2", "--max-request-bytes", "4096", "--max-tokens", "4")


def _openai(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=KEY, max_retries=0)


def _anthropic(server) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.base_url, api_key=KEY, max_retries=0)


def _all_routes(server) -> list[tuple[str, str]]:
    spec = httpx.get(f"{server.base_url}/openapi.json", headers={"authorization": f"Bearer {KEY}"}).json()
    routes = [(m.upper(), p) for p, ops in spec["paths"].items() for m in ops]
    return routes + [("GET", "/metrics"), ("GET", "/openapi.json"), ("GET", "/docs")]


def test_every_route_but_health_needs_the_key(server):
    routes = _all_routes(server)
    assert ("POST", "/v1/chat/completions") in routes and ("POST", "/v1/messages") in routes
    for method, path in routes:
        for headers in ({}, {"authorization": "Bearer wrong"}, {"x-api-key": KEY + "x"}, {"authorization": KEY}):
            resp = httpx.request(method, f"{server.base_url}{path}", headers=headers, json={})
            if path in ("/health", "/"):
                assert resp.status_code == 200, (method, path)
                continue
            assert resp.status_code == 401, (method, path, headers, resp.status_code)
            if method == "HEAD":
                continue
            body = resp.json()
            if path.startswith("/v1/messages"):
                assert body["type"] == "error" and body["error"]["type"] == "authentication_error"
            else:
                assert body["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{server.base_url}/metrics", headers={"x-api-key": KEY}).status_code == 200
    assert _openai(server).models.list().data[0].id


def test_limits_are_400s_naming_the_limit(server):
    client, claude = _openai(server), _anthropic(server)
    hi = [{"role": "user", "content": "hi"}]
    cases = [
        (lambda: client.chat.completions.create(model="m", messages=hi * 4), "--max-messages"),
        (lambda: client.chat.completions.create(model="m", messages=hi, max_tokens=9), "--max-tokens-cap"),
        (lambda: client.chat.completions.create(model="m", messages=[{"role": "user", "content": "word " * 60}]),
         "--max-prompt-tokens"),
        (lambda: client.chat.completions.create(model="m", messages=hi, tools=[
            {"type": "function", "function": {"name": f"f{i}", "parameters": {"type": "object"}}} for i in range(3)]),
         "--max-tools"),
        (lambda: client.completions.create(model="m", prompt=["a", "b", "c"]), "--max-prompts"),
        (lambda: client.completions.create(model="m", prompt="a", max_tokens=100), "--max-tokens-cap"),
        (lambda: client.responses.create(model="m", input="hi", max_output_tokens=50), "--max-tokens-cap"),
    ]
    for call, flag in cases:
        with pytest.raises(openai.BadRequestError) as err:
            call()
        assert flag in err.value.message
    with pytest.raises(anthropic.BadRequestError) as err:
        claude.messages.create(model="m", max_tokens=4, messages=[{"role": "user", "content": "a"},
                                                                  {"role": "assistant", "content": "b"}] * 2)
    assert "--max-messages" in err.value.message and err.value.body["type"] == "error"
    with pytest.raises(anthropic.BadRequestError) as err:
        claude.messages.create(model="m", max_tokens=4, messages=hi, tools=[
            {"name": f"t{i}", "input_schema": {"type": "object"}} for i in range(3)])
    assert "--max-tools" in err.value.message
    # within the limits, everything works
    assert client.chat.completions.create(model="m", messages=hi, max_tokens=8).choices[0].finish_reason
    assert claude.messages.create(model="m", max_tokens=8, messages=hi).stop_reason


def test_oversized_bodies_get_413_in_each_shape(server):
    client, claude = _openai(server), _anthropic(server)
    big = "x" * 5000
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": big}])
    assert err.value.status_code == 413 and "--max-request-bytes" in err.value.message
    with pytest.raises(anthropic.APIStatusError) as err:
        claude.messages.create(model="m", max_tokens=4, messages=[{"role": "user", "content": big}])
    assert err.value.status_code == 413 and err.value.body["error"]["type"] == "request_too_large"

    def chunks():  # no Content-Length: the limit is enforced while reading
        for _ in range(10):
            yield b'{"pad": "' + b"y" * 1000 + b'",'

    resp = httpx.post(f"{server.base_url}/v1/completions", content=chunks(),
                      headers={"authorization": f"Bearer {KEY}", "content-type": "application/json"})
    assert resp.status_code == 413 and resp.json()["error"]["code"] == "request_too_large"


def test_the_key_never_reaches_the_log(server):
    # requests that fail in every way, some carrying the key (right or wrong), then read the whole log
    httpx.post(f"{server.base_url}/v1/chat/completions", headers={"authorization": f"Bearer {KEY}"}, content=b"{bad")
    httpx.post(f"{server.base_url}/v1/chat/completions", headers={"x-api-key": KEY}, json={"messages": "no"})
    httpx.post(f"{server.base_url}/v1/messages", headers={"x-api-key": KEY[:-1]}, json={})
    httpx.get(f"{server.base_url}/v1/models?api_key=nothing", headers={"authorization": f"Bearer {KEY}!"})
    log = server.log()
    assert "rejected unauthenticated" in log  # the failures were logged...
    assert KEY not in log and KEY[:-1] not in log  # ...without the key


@pytest.mark.parametrize("public_metrics,private_health", [(False, False), (True, False), (False, True)])
def test_health_and_metrics_exemptions_are_configurable(tiny_qwen3, public_metrics, private_health):
    from vllm_mlx.api.app import create_app
    from vllm_mlx.config import ServerConfig
    from vllm_mlx.limits import AccessConfig

    config = ServerConfig(model=str(tiny_qwen3), api_keys=(KEY,),
                          access=AccessConfig(public_metrics=public_metrics, private_health=private_health))
    client = TestClient(create_app(config))  # no lifespan: the engine is not started, auth is what is tested
    assert (client.get("/metrics").status_code == 401) is not public_metrics
    assert (client.get("/health").status_code == 401) is private_health
    assert client.get("/metrics", headers={"x-api-key": KEY}).status_code == 200
    assert client.get("/v1/models").status_code == 401


@pytest.mark.reliability
def test_health_without_the_key_is_liveness_only(server):
    """No folder paths, counters or memory figures for whoever asks; the key shows them."""
    public = httpx.get(f"{server.base_url}/health")
    assert public.status_code == 200 and public.json() == {"status": "ok"}
    for headers in ({"authorization": "Bearer wrong"}, {"x-api-key": KEY + "x"}):
        assert httpx.get(f"{server.base_url}/health", headers=headers).json() == {"status": "ok"}
    keyed = httpx.get(f"{server.base_url}/health", headers={"x-api-key": KEY}).json()
    assert keyed["status"] == "ok" and "engine" in keyed and "memory" in keyed and keyed["model"]
