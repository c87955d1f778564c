"""Prefix-cache namespaces (one per LoRA adapter): state cached under one namespace is reused under
that namespace only, never under another or under the base model (None), in memory and on disk,
for KV-only models (blocks) and models with state layers (checkpoints)."""

from __future__ import annotations

import pytest
from mlx_lm.models.cache import make_prompt_cache

from vllm_mlx.engine.block_store import BlockDiskStore, read_metadata
from vllm_mlx.engine.model_runner import ModelRunner
from vllm_mlx.engine.numerics import logits_close
from vllm_mlx.engine.prefix_cache import PrefixCache, reference_shapes
from vllm_mlx.engine.request import GenerationRequest
from vllm_mlx.engine.sequence import Sequence
from vllm_mlx.models.loader import load_model
from vllm_mlx_testing.arch_models import build_arch_model

A, B = bytes(range(16)), bytes(range(1, 17))  # two adapters' fingerprints
LONG = [(i * 37) % 500 + 10 for i in range(40)]  # 2 full 16-token blocks + an 8-token tail
SHORT = [(i * 11) % 400 + 20 for i in range(10)]  # shorter than one block: a tail only
OTHER = [(i * 7) % 300 + 30 for i in range(40)]


@pytest.fixture(scope="module", params=["blocks", "checkpoints"])
def runner(request, tiny_qwen3, models_dir) -> ModelRunner:
    folder = tiny_qwen3 if request.param == "blocks" else build_arch_model(models_dir / "ns-arch-lfm2", "lfm2")
    return ModelRunner(load_model(str(folder), compute_dtype="float32").model)


def _kv(runner: ModelRunner, tokens: list[int]) -> tuple:
    seq = Sequence(GenerationRequest("r", tokens), set())
    return runner.prefill(seq, len(tokens)), seq.cache


def _prefix_cache(runner: ModelRunner, folder=None) -> PrefixCache:
    disk = folder and BlockDiskStore(folder, "fp", 1 << 30, reference_shapes(runner.model))
    return PrefixCache(make_prompt_cache(runner.model), 1 << 30, "fp", block_size=16, disk=disk)


def _hit(cache: PrefixCache, tokens: list[int], namespace: bytes | None = None) -> int:
    return cache.lookup(tokens + [5, 6, 7], namespace).num_tokens


@pytest.mark.parametrize("tier", ["memory", "disk"])
def test_entries_are_reused_only_under_their_namespace(runner, tier, tmp_path):
    disk = tier == "disk"
    # what each prompt reuses without namespaces (on disk: no partial blocks of a KV-only model)
    base = _prefix_cache(runner, tmp_path / "base" if disk else None)
    for tokens in (LONG, SHORT):
        base.insert(tokens, _kv(runner, tokens)[1])
    if disk:
        base = _prefix_cache(runner, tmp_path / "base")
    expected = {len(t): _hit(base, t) for t in (LONG, SHORT)}
    block_mode = base.block_mode
    assert expected == {40: 32 if disk and block_mode else 40, 10: 0 if disk and block_mode else 10}

    writer = _prefix_cache(runner, tmp_path / "ns" if disk else None)
    for tokens in (LONG, SHORT):
        writer.insert(tokens, _kv(runner, tokens)[1], namespace=A)
    writer.insert(OTHER, _kv(runner, OTHER)[1])  # the base model's
    reader = _prefix_cache(runner, tmp_path / "ns") if disk else writer  # a restart reads the folder only
    for tokens in (LONG, SHORT):
        assert _hit(reader, tokens, B) == 0 and _hit(reader, tokens) == 0
        assert _hit(reader, tokens, A) == expected[len(tokens)]
        assert _hit(reader, tokens, B) == 0 and _hit(reader, tokens) == 0  # also once A's entries are in memory
    assert _hit(reader, OTHER, A) == 0 and _hit(reader, OTHER, B) == 0
    assert _hit(reader, OTHER) == (32 if disk and block_mode else 40)
    if disk and not block_mode:  # a namespace's first checkpoint names its root; the base model's stays ''
        def parents(name: str) -> set[str]:
            return {read_metadata(f)["parent"] for f in (tmp_path / name).rglob("c-*.safetensors")}
        assert "" in parents("base") and "" not in parents("ns") and reader._root(A).hex() in parents("ns")


def test_namespaced_hit_matches_fresh_prefill_and_eviction_stays_consistent(runner):
    cache = _prefix_cache(runner)
    assert cache.block_hashes(LONG) == cache.block_hashes(LONG, namespace=None) != cache.block_hashes(LONG, namespace=A)
    _, kv = _kv(runner, LONG)
    cache.insert(LONG, kv)
    one = (cache.stats.entries, cache.stats.bytes)
    cache.insert(LONG, kv, namespace=A)
    assert (cache.stats.entries, cache.stats.bytes) == (2 * one[0], 2 * one[1])  # nothing shared across namespaces
    follow = LONG + [5, 6, 7]
    expected, _ = _kv(runner, follow)
    hit = cache.lookup(follow, A)
    seq = Sequence(GenerationRequest("h", follow), set())
    seq.cache, seq.num_computed = hit.cache, hit.num_tokens
    assert hit.num_tokens == 40 and logits_close(runner.prefill(seq, 3), expected)[0]
    assert cache.shrink(one[1]) >= one[1] and cache.stats.evictions >= 1
    assert cache.shrink(1 << 40) > 0 and cache.stats.entries == cache.stats.bytes == cache.stats.checkpoints == 0
    assert not cache._under and _hit(cache, LONG, A) == _hit(cache, LONG) == 0
    cache.insert(LONG, kv, namespace=B)
    cache.clear()
    assert _hit(cache, LONG, B) == 0 and cache.stats.entries == 0
