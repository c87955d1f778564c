"""A server configured by file and profiles: /v1/capabilities, CORS, the page at /, rate limiting."""

from __future__ import annotations

import anthropic
import httpx
import openai
import pytest

from vllm_mlx.api.rate_limit import TokenBuckets

KEY = "op-key"
APP_ORIGIN = "http://app.test"


@pytest.fixture(scope="module")
def operator_server(start_server, scripted_qwen3, tmp_path_factory):
    config = tmp_path_factory.mktemp("operator") / "serve.yaml"
    config.write_text(f"model: {scripted_qwen3}\ntrust-remote-code: true\nserved-model-name: [scripted-op]\n"
                      f"api-key: {KEY}\ncors-origins: ['{APP_ORIGIN}']\nprofile: text-tools\nclient: codex\n"
                      "max-num-seqs: 4\n")
    return start_server("--config", config)


@pytest.fixture(scope="module")
def limited_server(start_server, tiny_qwen3):
    return start_server(tiny_qwen3, "--served-model-name", "tiny", "--rate-limit", "2",
                        "--api-key", "k1", "--api-key", "k2")


def test_capabilities_report_the_resolved_settings(operator_server):
    r = httpx.get(f"{operator_server.base_url}/v1/capabilities", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200
    caps = r.json()
    assert caps["model"]["id"] == "scripted-op"
    assert caps["profile"] == "text-tools" and caps["client"] == "codex"
    assert caps["parsers"]["tool_calls"] == "hermes" and caps["parsers"]["tool_call_parser_flag"] == "auto"
    assert caps["context"]["default_max_tokens"] == 8192  # codex's profile (the client sends none)
    assert caps["context"]["max_model_len"] > 0
    assert caps["sampling_defaults"]["temperature"] == 0.6  # text-tools
    assert caps["auth"]["mode"] == "api_key" and caps["cors"]["origins"] == [APP_ORIGIN]
    assert caps["modalities"]["input"] == ["text"] and caps["features"]["prefix_cache"] is True
    assert caps["features"]["speculative_decoding"] == "ngram"  # the default chose prompt lookup
    assert "/v1/responses" in caps["endpoints"] and "/v1/embeddings" not in caps["endpoints"]
    # x-api-key works as well as Bearer; no key -> 401 in the OpenAI shape
    assert httpx.get(f"{operator_server.base_url}/v1/capabilities", headers={"x-api-key": KEY}).status_code == 200
    denied = httpx.get(f"{operator_server.base_url}/v1/capabilities")
    assert denied.status_code == 401 and denied.json()["error"]["code"] == "invalid_api_key"


def test_client_settings_printed_at_startup(operator_server):
    log = operator_server.log()
    assert "=== client settings for codex" in log
    assert f'base_url = "{operator_server.base_url}/v1"' in log and 'model = "scripted-op"' in log


def test_served_through_the_sdk_with_profile_defaults(operator_server):
    client = openai.OpenAI(base_url=f"{operator_server.base_url}/v1", api_key=KEY, max_retries=0)
    resp = client.chat.completions.create(model="scripted-op", messages=[{"role": "user", "content": "hi"}])
    assert resp.choices[0].message.content.startswith("Hello from the scripted model")


def test_cors_preflight_and_headers(operator_server):
    url = f"{operator_server.base_url}/v1/chat/completions"
    pre = httpx.options(url, headers={"Origin": APP_ORIGIN, "Access-Control-Request-Method": "POST",
                                      "Access-Control-Request-Headers": "authorization, content-type"})
    assert pre.status_code == 200
    assert pre.headers["access-control-allow-origin"] == APP_ORIGIN
    assert "POST" in pre.headers["access-control-allow-methods"]
    assert "authorization" in pre.headers["access-control-allow-headers"].lower()
    other = httpx.options(url, headers={"Origin": "http://evil.test", "Access-Control-Request-Method": "POST"})
    assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
    # real requests from the allowed origin carry the header, errors (401) included
    ok = httpx.get(f"{operator_server.base_url}/v1/models", headers={"Origin": APP_ORIGIN, "x-api-key": KEY})
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == APP_ORIGIN
    bad = httpx.get(f"{operator_server.base_url}/v1/models", headers={"Origin": APP_ORIGIN})
    assert bad.status_code == 401 and bad.headers["access-control-allow-origin"] == APP_ORIGIN


def test_page_for_browsers_json_for_probes(operator_server):
    base = operator_server.base_url
    page = httpx.get(f"{base}/", headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="model-name"' in page.text and "/v1/chat/completions" in page.text
    probe = httpx.get(f"{base}/")  # Accept: */* as API clients send: the JSON liveness answer is unchanged
    assert probe.status_code == 200 and probe.json()["status"] == "ok"
    assert httpx.head(f"{base}/").status_code == 200  # Claude Code's probe, no key needed
    assert httpx.head(f"{base}/ui").status_code == 200
    ui = httpx.get(f"{base}/ui")
    assert ui.status_code == 200 and "Chat playground" in ui.text


def test_rate_limit_429_with_retry_after_per_key(limited_server):
    base = limited_server.base_url
    k1 = openai.OpenAI(base_url=f"{base}/v1", api_key="k1", max_retries=0)
    assert [m.id for m in k1.models.list().data] == ["tiny"]
    k1.models.list()
    with pytest.raises(openai.RateLimitError) as exc:
        k1.models.list()
    response = exc.value.response
    assert response.json()["error"]["type"] == "rate_limit_error"
    assert response.json()["error"]["code"] == "rate_limit_exceeded"
    retry_after = int(response.headers["retry-after"])
    assert 1 <= retry_after <= 30  # 2 per minute: one token every 30 s
    # the Anthropic route answers in its own error shape
    ant = anthropic.Anthropic(base_url=base, api_key="k1", max_retries=0)
    with pytest.raises(anthropic.RateLimitError) as aexc:
        ant.messages.create(model="tiny", max_tokens=4, messages=[{"role": "user", "content": "hi"}])
    body = aexc.value.response.json()
    assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error"
    assert "retry-after" in aexc.value.response.headers
    # another key has its own bucket; /health is never limited
    k2 = openai.OpenAI(base_url=f"{base}/v1", api_key="k2", max_retries=0)
    assert k2.models.list().data[0].id == "tiny"
    assert all(httpx.get(f"{base}/health").status_code == 200 for _ in range(4))


def test_token_bucket_refills_at_the_configured_rate():
    now = [100.0]
    buckets = TokenBuckets(6, clock=lambda: now[0])  # 6 per minute: one every 10 s, burst 6
    assert [buckets.take("a") for _ in range(6)] == [0.0] * 6
    assert buckets.take("a") == pytest.approx(10.0)
    now[0] += 5
    assert buckets.take("a") == pytest.approx(5.0)
    now[0] += 5
    assert buckets.take("a") == 0.0
    assert buckets.take("b") == 0.0  # separate caller
    now[0] += 3600  # refill caps at the burst size
    assert [buckets.take("a") for _ in range(7)].count(0.0) == 6


def test_without_server_keys_the_limit_is_per_client_ip():
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from vllm_mlx.api.rate_limit import RateLimitMiddleware

    async def ok(request):
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/v1/models", ok), Route("/health", ok)])
    app.add_middleware(RateLimitMiddleware, per_minute=1, by_key=False)
    client = TestClient(app)
    assert client.get("/v1/models", headers={"x-api-key": "a"}).status_code == 200
    limited = client.get("/v1/models", headers={"x-api-key": "b"})  # an invented key is no way around it
    assert limited.status_code == 429 and limited.headers["retry-after"] == "60"
    assert limited.json()["error"]["type"] == "rate_limit_error"
    assert client.get("/health").status_code == 200


def test_every_route_but_the_open_ones_needs_the_key(operator_server):
    base = operator_server.base_url
    spec = httpx.get(f"{base}/openapi.json", headers={"x-api-key": KEY}).json()
    routes = [(method.upper(), path.replace("{", "").replace("}", ""))
              for path, ops in spec["paths"].items() for method in ops]
    routes += [("GET", "/metrics"), ("GET", "/openapi.json"), ("GET", "/docs"), ("GET", "/v1/capabilities")]
    assert len(routes) > 10
    for method, path in routes:
        r = httpx.request(method, f"{base}{path}", json={} if method == "POST" else None)
        if path in ("/", "/health", "/ui"):
            assert r.status_code != 401, path
            continue
        assert r.status_code == 401, (method, path, r.status_code)
        body = r.json()
        if path.startswith("/v1/messages"):
            assert body["type"] == "error" and body["error"]["type"] == "authentication_error", path
        else:
            assert body["error"]["type"] == "authentication_error", path
        wrong = httpx.request(method, f"{base}{path}", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401, path
