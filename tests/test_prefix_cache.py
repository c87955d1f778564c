"""Prefix cache: reused keys/values give the same logits as a fresh prefill; eviction; API reporting."""

from __future__ import annotations

import re

import httpx
import mlx.core as mx
import openai
import pytest
from mlx_lm.models.cache import make_prompt_cache

from vllm_mlx.engine.model_runner import ModelRunner
from vllm_mlx.engine.numerics import logits_close  # tolerance by backend and dtype
from vllm_mlx.engine.prefix_cache import PrefixCache
from vllm_mlx.engine.request import GenerationRequest
from vllm_mlx.engine.sequence import Sequence
from vllm_mlx.models.loader import load_model



def _seq(tokens: list[int]) -> Sequence:
    return Sequence(GenerationRequest("r", tokens), set())


def _fresh_logits(runner: ModelRunner, tokens: list[int]) -> tuple[mx.array, list]:
    seq = _seq(tokens)
    logits = runner.prefill(seq, len(tokens))
    return logits, seq.cache


def _logits_after_hit(runner: ModelRunner, cache: PrefixCache, tokens: list[int]) -> tuple[mx.array, int]:
    seq = _seq(tokens)
    hit = cache.lookup(tokens)
    seq.cache, seq.num_computed = hit.cache, hit.num_tokens
    return runner.prefill(seq, len(tokens)), hit.num_tokens


@pytest.fixture(scope="module")
def qwen3_runner(tiny_qwen3):
    return ModelRunner(load_model(str(tiny_qwen3), compute_dtype="float32").model)


def test_block_hit_logits_match_fresh_prefill(qwen3_runner):
    runner = qwen3_runner
    cache = PrefixCache(make_prompt_cache(runner.model), 1 << 30, "tiny-qwen3", block_size=16)
    assert cache.block_mode
    first = list(range(10, 90))  # 80 tokens: 5 full blocks
    _, kv = _fresh_logits(runner, first)
    cache.insert(first, kv)
    follow_up = first + list(range(500, 530))  # shares all 80 tokens
    expected, _ = _fresh_logits(runner, follow_up)
    got, reused = _logits_after_hit(runner, cache, follow_up)
    assert reused == 80
    assert logits_close(got, expected)[0]
    # a prompt diverging inside block 2 reuses blocks 0-1 and, token by token, the 8 shared tokens of block 2
    diverging = first[:40] + [7] * 30
    expected, _ = _fresh_logits(runner, diverging)
    got, reused = _logits_after_hit(runner, cache, diverging)
    assert reused == 40 and logits_close(got, expected)[0]
    # the whole cached prompt again: one token is always left to compute
    assert cache.lookup(first).num_tokens == 79
    # token-exact reuse past the last full block: a cached partial block ("tail") is matched token by token
    with_tail = first + [900, 901, 902, 903, 904]  # 85 tokens: 5 full blocks + a 5-token tail
    _, kv = _fresh_logits(runner, with_tail)
    cache.insert(with_tail, kv)
    follow = with_tail[:83] + [1, 2, 3]
    expected, _ = _fresh_logits(runner, follow)
    got, reused = _logits_after_hit(runner, cache, follow)
    assert reused == 83 and logits_close(got, expected)[0]


def test_quantized_blocks_stay_close(qwen3_runner, tiny_qwen3):
    runner = qwen3_runner
    prompt = list(range(10, 74))  # two full 32-token blocks, no partial tail
    expected, kv = _fresh_logits(runner, prompt + [5, 6])
    for bits, tol in ((8, 0.05), (4, 0.5)):
        cache = PrefixCache(make_prompt_cache(runner.model), 1 << 30, "q", block_size=32, kv_bits=bits)
        cache.insert(prompt, kv)
        got, reused = _logits_after_hit(runner, cache, prompt + [5, 6])
        assert reused == 64
        assert mx.abs(got - expected).max().item() < tol
        assert mx.argmax(got).item() == mx.argmax(expected).item()
        plain = PrefixCache(make_prompt_cache(runner.model), 1 << 30, "f", block_size=32)
        plain.insert(prompt, kv)
        assert cache.stats.bytes < plain.stats.bytes * (0.6 if bits == 8 else 0.35)


def test_snapshot_mode_for_a_recurrent_architecture():
    from mlx_lm.models import mamba

    mx.random.seed(0)
    args = mamba.ModelArgs(model_type="mamba", vocab_size=300, hidden_size=32, intermediate_size=64, state_size=8,
                           num_hidden_layers=2, conv_kernel=4, use_bias=False, use_conv_bias=True, time_step_rank=4)
    model = mamba.Model(args)
    mx.eval(model.parameters())
    runner = ModelRunner(model)
    cache = PrefixCache(make_prompt_cache(model), 1 << 30, "tiny-mamba", block_size=16)
    assert not cache.block_mode and cache.stats.mode == "checkpoints"
    turn1 = list(range(1, 40))
    _, state = _fresh_logits(runner, turn1)
    cache.insert(turn1, state)
    turn2 = turn1 + list(range(100, 120))
    expected, _ = _fresh_logits(runner, turn2)
    got, reused = _logits_after_hit(runner, cache, turn2)
    assert reused == len(turn1)
    assert logits_close(got, expected)[0]
    # a snapshot is never partially reused: a prompt diverging inside it misses
    assert cache.lookup(turn1[:20] + [250] * 30).num_tokens == 0
    # the snapshot stays valid after the reusing sequence advanced its own (copied) state
    again, reused = _logits_after_hit(runner, cache, turn2)
    assert reused == len(turn1) and logits_close(again, expected)[0]


def test_budget_evicts_lru_leaves_first(qwen3_runner):
    runner = qwen3_runner
    probe = PrefixCache(make_prompt_cache(runner.model), 1 << 30, "b", block_size=16)
    a = list(range(10, 58))  # 3 blocks
    _, kv_a = _fresh_logits(runner, a)
    probe.insert(a, kv_a)
    block_bytes = probe.stats.bytes // 3
    cache = PrefixCache(make_prompt_cache(runner.model), 4 * block_bytes, "b", block_size=16)
    cache.insert(a, kv_a)
    b = a[:32] + list(range(300, 316))  # shares 2 blocks with a, adds 1
    _, kv_b = _fresh_logits(runner, b)
    cache.insert(b, kv_b)
    assert cache.stats.entries == 4 and cache.stats.bytes <= 4 * block_bytes
    c = list(range(600, 632))  # 2 new blocks: over budget, evict LRU leaves (a's last block first)
    _, kv_c = _fresh_logits(runner, c)
    cache.insert(c, kv_c)
    assert cache.stats.bytes <= 4 * block_bytes and cache.stats.evictions >= 1
    assert cache.lookup(b + [1]).num_tokens >= 32  # shared inner blocks survived
    assert cache.lookup(a + [1]).num_tokens == 32  # a's leaf went first


# -- through the server ---------------------------------------------------------------


SYSTEM = "You are a helpful assistant. " + " ".join(f"Rule {i}: be kind and brief." for i in range(40))


def test_second_turn_reports_cached_tokens(qwen3_server):
    httpx.post(f"{qwen3_server.base_url}/v1/cache/clear")  # the server is shared: start cold
    c = openai.OpenAI(base_url=f"{qwen3_server.base_url}/v1", api_key="x", max_retries=0)
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "First question?"}]
    first = c.chat.completions.create(model="m", messages=messages, max_tokens=12, temperature=0)
    assert first.usage.prompt_tokens > 200
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    messages += [{"role": "assistant", "content": first.choices[0].message.content},
                 {"role": "user", "content": "Second question?"}]
    second = c.chat.completions.create(model="m", messages=messages, max_tokens=12, temperature=0,
                                       stream=True, stream_options={"include_usage": True})
    usage = [ch.usage for ch in second if ch.usage][0]
    assert usage.prompt_tokens_details.cached_tokens >= first.usage.prompt_tokens - 64
    stats = httpx.get(f"{qwen3_server.base_url}/v1/cache/stats").json()
    assert stats["enabled"] and stats["hits"] >= 1 and stats["hit_tokens"] >= 200 and stats["bytes"] > 0
    assert httpx.post(f"{qwen3_server.base_url}/v1/cache/clear").json() == {"cleared": True}


def test_cache_off_server_reports_nothing(start_server, tiny_qwen3):
    server = start_server(tiny_qwen3, "--no-prefix-cache")
    c = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0)
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hi"}]
    for _ in range(2):
        resp = c.chat.completions.create(model="m", messages=messages, max_tokens=4)
        assert resp.usage.prompt_tokens_details.cached_tokens == 0
    assert httpx.get(f"{server.base_url}/v1/cache/stats").json() == {"enabled": False}
    assert httpx.post(f"{server.base_url}/v1/cache/clear").status_code == 400


def test_disk_tier_survives_restart_and_rejects_foreign_files(start_server, tiny_qwen3, tiny_llama, tmp_path):
    import json

    cache_dir = tmp_path / "kv"
    warm = tmp_path / "warm.jsonl"
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Warm question?"}]
    warm.write_text(json.dumps({"messages": messages}) + "\n" + json.dumps("plain text prompt " * 30) + "\n")
    args = (tiny_qwen3, "--kv-cache-dir", cache_dir, "--prefix-block-size", "32")

    def ask(server):
        c = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0)
        resp = c.chat.completions.create(model="m", messages=messages, max_tokens=4)
        return resp.usage.prompt_tokens_details.cached_tokens, httpx.get(f"{server.base_url}/v1/cache/stats").json()

    first = start_server(*args, "--warm-prompts", warm)
    assert "warm-up: prefilling 2 prompt(s)" in first.log()
    assert re.search(r"warmed 2 of 2 prompts \(\d+ tokens\) from .* in \d+\.\d s \(\d+ tokens/s\)", first.log())
    assert httpx.get(f"{first.base_url}/v1/cache/stats").json()["disk_writes"] > 5
    first.stop()

    restarted = start_server(*args)  # a fresh process: only the disk tier can hit
    cached, stats = ask(restarted)
    assert cached >= 200 and stats["disk_reads"] >= 6 and stats["disk_rejected"] == 0
    restarted.stop()

    for f in cache_dir.rglob("*.safetensors"):  # damage every block file
        f.write_bytes(b"not a safetensors file")
    damaged = start_server(*args)
    cached, stats = ask(damaged)
    assert cached == 0 and stats["disk_rejected"] >= 1 and stats["disk_reads"] == 0
    damaged.stop()

    # another model never reads this cache: its blocks live under its own fingerprint
    other = start_server(tiny_llama, "--kv-cache-dir", cache_dir, "--prefix-block-size", "32")
    cached, stats = ask(other)
    assert cached == 0 and stats["disk_reads"] == 0 and stats["disk_rejected"] == 0


def test_cache_endpoints_require_the_api_key(start_server, tiny_qwen3):
    server = start_server(tiny_qwen3, "--api-key", "sekret")
    assert httpx.get(f"{server.base_url}/health").status_code == 200  # health stays open
    for method, path in (("GET", "/v1/cache/stats"), ("POST", "/v1/cache/clear"), ("GET", "/v1/models"),
                         ("POST", "/v1/chat/completions")):
        resp = httpx.request(method, server.base_url + path, json={}, timeout=10)
        assert resp.status_code == 401 and resp.json()["error"]["code"] == "invalid_api_key", path
        resp = httpx.request(method, server.base_url + path, json={}, headers={"x-api-key": "wrong"}, timeout=10)
        assert resp.status_code == 401, path
    ok = httpx.get(f"{server.base_url}/v1/cache/stats", headers={"Authorization": "Bearer sekret"})
    assert ok.status_code == 200 and ok.json()["enabled"]
    c = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="sekret", max_retries=0)
    assert c.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], max_tokens=2)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="nope", max_retries=0).models.list()
