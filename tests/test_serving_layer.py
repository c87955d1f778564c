"""The one serving layer: every chat-shaped API runs through the same ``start_chat`` once per
request, and the serving layer does not depend on any API wing."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from vllm_mlx.api.app import create_app
from vllm_mlx.config import ServerConfig
from vllm_mlx.serving.state import ServingState

SERVING = Path(__file__).resolve().parents[1] / "src" / "vllm_mlx" / "serving"


@pytest.fixture(scope="module")
def client_and_calls(tiny_qwen3):
    calls: list[str] = []
    original = ServingState.start_chat

    async def counted(self, req, request_id, *args, **kwargs):
        calls.append(request_id)
        return await original(self, req, request_id, *args, **kwargs)

    ServingState.start_chat = counted
    try:
        with TestClient(create_app(ServerConfig(model=str(tiny_qwen3)))) as client:
            yield client, calls
    finally:
        ServingState.start_chat = original


@pytest.mark.parametrize("path, body", [
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}),
    ("/v1/responses", {"input": "Hi", "max_output_tokens": 3}),
    ("/v1/messages", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}),
])
@pytest.mark.parametrize("stream", [False, True])
def test_each_api_calls_the_one_chat_pipeline_once(client_and_calls, path, body, stream):
    client, calls = client_and_calls
    before = len(calls)
    resp = client.post(path, json={"model": "m", **body, "stream": stream})
    assert resp.status_code == 200, resp.text
    assert len(calls) == before + 1


def test_count_tokens_renders_like_messages_without_generating(client_and_calls):
    client, calls = client_and_calls
    before = len(calls)
    resp = client.post("/v1/messages/count_tokens", json={"model": "m", "messages": [{"role": "user", "content": "Hi"}]})
    assert resp.status_code == 200 and resp.json()["input_tokens"] > 0
    assert len(calls) == before


def test_the_serving_layer_imports_no_api_wing():
    for path in SERVING.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                module = ("." * node.level) + (node.module or "")
                assert not module.startswith("..api") and "fastapi" not in module, f"{path.name}: {module}"


def test_a_single_model_is_a_registry_of_one(client_and_calls):
    """One code path for one model and for --models: the app always has a registry; the single model
    is its one pinned entry (loaded at startup, never idle-unloaded), reached by any model name."""
    client, _ = client_and_calls
    registry = client.app.state.model_registry
    assert registry.single and not hasattr(client.app.state, "serving")
    (entry,) = registry.entries.values()
    assert entry.pinned and entry.loaded and registry.entry("any-name") is entry
    registry.ttl = 1e-9  # an idle check cannot unload the single model
    client.portal.call(registry.unload_idle)
    assert entry.loaded and entry.unloads == 0
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["model"] == entry.name and "engine" in health
    assert [m["name"] for m in health["models"]["models"]] == [entry.name]
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == list(entry.spec.names)


def test_no_single_model_branch_outside_the_registry():
    """Routes, /health, metrics, shutdown and the monitors read the registry; none asks whether there is one."""
    api = SERVING.parent / "api"
    for path in [*api.glob("*.py"), *SERVING.glob("*.py")]:
        text = path.read_text()
        for needle in ("registry is None", "registry is not None", "state.serving", '"model_registry", None',
                       'state, "serving"'):
            assert needle not in text, f"{path.name}: {needle}"
