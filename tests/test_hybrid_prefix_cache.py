"""Prefix-cache checkpoints for the architectures people run today (recurrent and sliding-window
layers): a restore gives the logits a fresh prefill gives, and real conversations through the
server reuse their prefix — with the same output as a cold cache."""

from __future__ import annotations

import httpx
import mlx.core as mx
import openai
import pytest
from mlx_lm.models.cache import make_prompt_cache

from vllm_mlx.bench.cache_conversations import final_request, system_prompt
from vllm_mlx.engine.model_runner import ModelRunner
from vllm_mlx.engine.numerics import logits_close
from vllm_mlx.engine.prefix_cache import PrefixCache
from vllm_mlx.engine.request import GenerationRequest
from vllm_mlx.engine.sequence import Sequence
from vllm_mlx.models.loader import load_model
from vllm_mlx_testing.arch_models import ARCHITECTURES, MTP_ARCHITECTURES, build_arch_model


@pytest.fixture(scope="session")
def arch_folder(models_dir):
    built = {}

    def get(arch: str):
        if arch not in built:
            built[arch] = build_arch_model(models_dir / f"arch-{arch}", arch)
        return built[arch]

    return get


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_checkpoint_restores_match_a_fresh_prefill(arch, arch_folder):
    """Checkpoints at 3 positions of a long prompt (and at its end); prompts that share each one
    reuse exactly it, and the logits after the restore equal a fresh prefill's."""
    model = load_model(str(arch_folder(arch)), compute_dtype="float32").model
    runner = ModelRunner(model)
    cache = PrefixCache(make_prompt_cache(model), 1 << 30, arch, block_size=16)
    assert not cache.block_mode, f"{arch} should need checkpoints"
    prompt = [(i * 37) % 500 + 10 for i in range(150)]
    seq = Sequence(GenerationRequest("r", prompt), set())
    for stop in (23, 64, 101, len(prompt)):  # mid-block, at a block boundary, past a sliding window
        runner.prefill(seq, stop - seq.num_computed)
        cache.insert(prompt[:stop], seq.cache)
    assert cache.stats.checkpoints == 4 and cache.stats.checkpoint_bytes > 0
    for shared, branch in ((23, 40), (64, 80), (101, 130), (150, 170)):
        tokens = prompt[:shared] + [(7 * i) % 300 + 20 for i in range(branch - shared)]
        if shared == 150:
            tokens = prompt + tokens[150:]
        hit = cache.lookup(tokens)
        assert hit.num_tokens == shared, (arch, shared)
        fresh = Sequence(GenerationRequest("f", tokens), set())
        expected = runner.prefill(fresh, len(tokens))
        restored = Sequence(GenerationRequest("h", tokens), set())
        restored.cache, restored.num_computed = hit.cache, hit.num_tokens
        got = runner.prefill(restored, len(tokens) - hit.num_tokens)
        close, diff = logits_close(got, expected)
        assert close, f"{arch}: restore at {shared} differs by {diff}"
    # a prompt that leaves the cached tokens before the first checkpoint reuses nothing
    assert cache.lookup([1, 2, 3] + prompt[3:60]).num_tokens == 0


def _chat(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)


@pytest.mark.parametrize("arch", ARCHITECTURES + MTP_ARCHITECTURES)
def test_conversations_reuse_the_cache_with_cold_cache_output(arch, arch_folder, start_server):
    """Turn 2, the next user turn after a tool round and a new session with the same system prompt
    all restore most of their prompt, and answer exactly as with a cold cache (the mixture-of-experts
    models, whose caches are all keys and values -- a latent attention's latent and rotary key too --
    reuse blocks instead of checkpoints)."""
    server = start_server(arch_folder(arch), "--prefix-block-size", "32", "--max-tokens", "16")
    client = _chat(server.base_url)
    system = system_prompt(300)
    for scenario in ("turn_two", "agent_turn", "new_session"):
        messages, tools = final_request(client, "m", scenario, system, max_tokens=12)
        kwargs = dict(model="m", messages=messages, max_tokens=12, temperature=0.0, **({"tools": tools} if tools else {}))
        warm = client.chat.completions.create(**kwargs)
        cached = warm.usage.prompt_tokens_details.cached_tokens
        assert cached >= 0.5 * warm.usage.prompt_tokens, (arch, scenario, cached, warm.usage.prompt_tokens)
        assert httpx.post(f"{server.base_url}/v1/cache/clear").json() == {"cleared": True}
        cold = client.chat.completions.create(**kwargs)
        assert cold.usage.prompt_tokens_details.cached_tokens == 0
        assert warm.choices[0].message.content == cold.choices[0].message.content, (arch, scenario)
        assert warm.choices[0].message.tool_calls == cold.choices[0].message.tool_calls
    stats = httpx.get(f"{server.base_url}/v1/cache/stats").json()
    if arch in MTP_ARCHITECTURES:
        assert stats["mode"] == "blocks" and stats["checkpoints"] == 0
    else:
        assert stats["mode"] == "checkpoints" and stats["checkpoints"] >= 1 and stats["checkpoint_bytes"] > 0


def test_restore_checker_catches_a_wrong_restore(arch_folder):
    """--verify-cache-restores: a restore that is not what a fresh prefill gives is counted, and the
    sequence goes on from the fresh cache (reporting no reuse); a right one passes."""
    from vllm_mlx.engine.prefix_cache import PrefixCacheStats
    from vllm_mlx.engine.restore_check import RestoreChecker

    model = load_model(str(arch_folder("qwen3_5")), compute_dtype="float32").model
    runner = ModelRunner(model)
    checker = RestoreChecker(model, 1.0, None, 64)
    stats = PrefixCacheStats()
    prompt = [(i * 13) % 400 + 10 for i in range(90)]
    other = [(i * 29) % 400 + 10 for i in range(90)]
    for source, mismatch in ((prompt, False), (other, True)):
        donor = Sequence(GenerationRequest("d", source), set())
        runner.prefill(donor, 60)
        seq = Sequence(GenerationRequest("r", prompt), set())
        seq.cache, seq.num_computed, seq.num_cached_tokens = donor.cache, 60, 60
        checker.maybe_verify(seq, stats)
        assert stats.restore_mismatches == int(mismatch)
        assert seq.num_cached_tokens == (0 if mismatch else 60)
        fresh = Sequence(GenerationRequest("f", prompt), set())
        expected = runner.prefill(fresh, 90)
        assert logits_close(runner.prefill(seq, 30), expected)[0]  # either way the output is right
    assert stats.verified_restores == 2


def test_verified_restores_and_checkpoint_memory_are_reported(arch_folder, start_server):
    server = start_server(arch_folder("nemotron_h"), "--verify-cache-restores", "1", "--max-tokens", "8")
    client = _chat(server.base_url)
    messages, tools = final_request(client, "m", "turn_two", system_prompt(200), max_tokens=8)
    resp = client.chat.completions.create(model="m", messages=messages, max_tokens=8, temperature=0.0)
    assert resp.usage.prompt_tokens_details.cached_tokens > 0
    stats = httpx.get(f"{server.base_url}/v1/cache/stats").json()
    assert stats["verified_restores"] >= 1 and stats["restore_mismatches"] == 0
    assert stats["checkpoints"] >= 2 and stats["checkpoint_bytes"] > 0
    metrics = httpx.get(f"{server.base_url}/metrics").text
    assert "vllm_mlx_prefix_cache_verified_restores" in metrics
    assert "vllm_mlx_prefix_cache_restore_mismatches 0.0" in metrics


def test_a_completion_that_ends_with_eos_is_checkpointed(arch_folder, start_server):
    """The end-of-completion checkpoint: an answer that stops on the end-of-turn token is rendered
    back identically in the next turn, which then reuses prompt + answer."""
    from mlx_lm.utils import load_tokenizer

    folder = arch_folder("lfm2")
    eos = load_tokenizer(folder).eos_token_id
    server = start_server(folder, "--max-tokens", "8")
    client = _chat(server.base_url)
    messages = [{"role": "system", "content": system_prompt(200)}, {"role": "user", "content": "Say nothing."}]
    first = client.chat.completions.create(model="m", messages=messages, max_tokens=8, temperature=0.0,
                                           logit_bias={str(eos): 100})
    assert first.choices[0].finish_reason == "stop" and first.usage.completion_tokens == 1
    messages += [{"role": "assistant", "content": first.choices[0].message.content or ""},
                 {"role": "user", "content": "Thanks."}]
    second = client.chat.completions.create(model="m", messages=messages, max_tokens=4, temperature=0.0)
    assert second.usage.prompt_tokens_details.cached_tokens == first.usage.prompt_tokens + 1
