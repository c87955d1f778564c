"""Batch-divergence monitor: a model whose output really depends on the batch size is detected and
serialized; a model without divergence is left batched."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest

from vllm_mlx.api.divergence_monitor import token_agreement

ALONE = "Alone I answer the same way every time."
BATCHED = "Together we say something else entirely!"


def test_cli_checks_monitor_flags():
    from test_cli import run_cli

    result = run_cli("serve", "--batch-divergence-threshold", "1.5")
    assert result.returncode != 0 and "--batch-divergence-threshold must be within 0..1" in result.stderr
    result = run_cli("serve", "--batch-divergence-action", "ignore")
    assert result.returncode != 0 and "invalid choice: 'ignore'" in result.stderr


def test_token_agreement_counts_missing_positions_as_mismatches():
    assert token_agreement([[1, 2, 3]], [[1, 2, 3]]) == 1.0
    assert token_agreement([[1, 2, 3], [4]], [[1, 9, 3], [4]]) == 0.75
    assert token_agreement([[1, 2]], [[1, 2, 3, 4]]) == 0.5
    assert token_agreement([[]], [[]]) == 1.0


@pytest.fixture(scope="module")
def variant_model(models_dir):
    from vllm_mlx_testing.batch_variant_model import build_batch_variant_model

    return build_batch_variant_model(models_dir / "batch-variant", ALONE, BATCHED)


async def _concurrent_chats(base_url: str, n: int, stream: bool) -> list[str]:
    client = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="x")

    async def one(i: int) -> str:
        messages = [{"role": "user", "content": f"question {i}"}]
        if not stream:
            r = await client.chat.completions.create(model="variant", messages=messages, temperature=0)
            return r.choices[0].message.content
        text = ""
        async for chunk in await client.chat.completions.create(model="variant", messages=messages,
                                                                temperature=0, stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                text += chunk.choices[0].delta.content
        return text

    try:
        return await asyncio.gather(*(one(i) for i in range(n)))
    finally:
        await client.close()


def _metric(base_url: str, name: str, model: str = "variant") -> float:
    for line in httpx.get(f"{base_url}/metrics").text.splitlines():
        if line.startswith(f'{name}{{model="{model}"}} '):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def test_diverging_model_is_serialized_streams_included(start_server, variant_model):
    server = start_server(variant_model, "--trust-remote-code", "--served-model-name", "variant",
                          "--batch-divergence-monitor", "--batch-divergence-action", "serialize",
                          "--batch-divergence-interval", "0")
    health = server.health()
    status = health["batch_divergence"]
    assert status["probes"] == 1 and status["agreement"] < 0.5, status
    assert status["serialized"] is True and status["action"] == "serialize"
    assert health["engine"]["max_num_seqs"] == 1
    assert _metric(server.base_url, "vllm_mlx_batch_divergence_serialized") == 1
    assert _metric(server.base_url, "vllm_mlx_batch_divergence_agreement") == status["agreement"]

    # Concurrent requests, streamed and not, now run one at a time: every output is the serial one.
    assert asyncio.run(_concurrent_chats(server.base_url, 4, stream=True)) == [ALONE] * 4
    assert asyncio.run(_concurrent_chats(server.base_url, 4, stream=False)) == [ALONE] * 4
    engine = server.health()["engine"]
    assert engine["peak_active"] == 1, engine  # never more than one sequence admitted at once
    assert engine["requests_finished"] >= 8


def test_warn_action_reports_but_keeps_batching(start_server, variant_model):
    server = start_server(variant_model, "--trust-remote-code", "--served-model-name", "variant",
                          "--max-num-seqs", "8", "--batch-divergence-monitor", "--batch-divergence-interval", "0")
    status = server.health()["batch_divergence"]
    assert status["agreement"] < 0.5 and status["serialized"] is False and status["action"] == "warn"
    assert "batch divergence" in server.log()
    # The divergence is real: prompts submitted together share a batch and get the batched continuation.
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x")
    batch = client.completions.create(model="variant", prompt=[f"prompt {i}" for i in range(4)], max_tokens=40,
                                      temperature=0)
    alone = client.completions.create(model="variant", prompt="prompt 0", max_tokens=40, temperature=0)
    assert alone.choices[0].text == ALONE
    assert any(choice.text != ALONE for choice in batch.choices), batch
    assert server.health()["engine"]["peak_active"] > 1
    assert _metric(server.base_url, "vllm_mlx_batch_divergence_serialized") == 0


def test_consistent_model_stays_batched(start_server, tiny_qwen3):
    server = start_server(tiny_qwen3, "--batch-divergence-monitor", "--batch-divergence-action", "serialize",
                          "--batch-divergence-interval", "1", "--max-num-seqs", "8")
    status = server.health()["batch_divergence"]
    assert status["agreement"] >= 0.95 and status["serialized"] is False, status
    assert server.health()["engine"]["max_num_seqs"] == 8
    # The periodic probe keeps running.
    deadline = asyncio.run(_wait_for_probes(server, 2))
    assert deadline, server.health()["batch_divergence"]


async def _wait_for_probes(server, n: int, timeout: float = 30.0) -> bool:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        if server.health()["batch_divergence"]["probes"] >= n:
            return True
        await asyncio.sleep(0.3)
    return False


def test_multi_model_serving_probes_each_model_when_it_loads(start_server, variant_model, tiny_qwen3):
    server = start_server("--models", f"variant={variant_model}", f"q={tiny_qwen3}", "--trust-remote-code",
                          "--batch-divergence-monitor", "--batch-divergence-action", "serialize",
                          "--batch-divergence-interval", "0")
    assert server.health()["batch_divergence"] == {}  # nothing loaded, nothing probed
    # The first request loads the model; its probe runs (and serializes) before any request generates.
    assert asyncio.run(_concurrent_chats(server.base_url, 3, stream=True)) == [ALONE] * 3
    status = server.health()["batch_divergence"]
    assert set(status) == {"variant"} and status["variant"]["serialized"] is True
    variant = next(m for m in server.health()["models"]["models"] if m["name"] == "variant")
    assert variant["engine"]["peak_active"] == 1 and variant["engine"]["max_num_seqs"] == 1
    assert _metric(server.base_url, "vllm_mlx_batch_divergence_serialized") == 1
