"""Distributed serving: the startup checks that need no second rank, and the engine's seam for its
followers."""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
import time

import pytest

from vllm_mlx.models.sharding import UnsplittableModelError, load_sharded


class Ranks:
    """A stand-in for an mx.distributed group: the checks run before any collective."""

    def __init__(self, size: int):
        self._size = size

    def size(self) -> int:
        return self._size

    def rank(self) -> int:
        return 0


def test_an_architecture_without_shard_or_pipeline_is_refused(tmp_path, tiny_qwen3):
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(tiny_qwen3 / name, tmp_path / name)
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "gpt2", "n_ctx": 128, "n_embd": 64, "n_head": 4, "n_layer": 2, "n_positions": 128,
        "layer_norm_epsilon": 1e-5, "vocab_size": 2048}))
    with pytest.raises(UnsplittableModelError, match="'gpt2' cannot be split across machines"):
        load_sharded(str(tmp_path), Ranks(2))


def test_heads_must_divide_among_the_ranks(tiny_qwen3):
    with pytest.raises(UnsplittableModelError, match=r"num_attention_heads \(4\) to be a multiple of 3"):
        load_sharded(str(tiny_qwen3), Ranks(3))


class RecordingPeers:
    """Step peers that keep what the engine tells them (what a rank 0's followers would be sent)."""

    idle_wait = 0.05

    def __init__(self):
        self.lost = False
        self.calls: list = []
        self.guarded: list[str] = []

    def share_cache_budget(self, budget):
        self.calls.append(("budget", budget))

    def send(self, record):
        self.calls.append(("record", record))

    def stop(self):
        self.calls.append(("stop", None))

    def guard(self, what):
        self.guarded.append(what)
        return contextlib.nullcontext()

    def ended(self, exc):
        return False


def test_an_engine_tells_its_step_peers_each_step_its_heartbeats_and_its_stop(tiny_qwen3):
    """The seam a distributed rank 0 plugs its followers into (engine.StepPeers): the prefix cache's
    budget once, a record with a schedule before each step (with the tokens fed to its decode
    forward), records without one while idle, the stop; each under the peers' guard."""
    from vllm_mlx.engine.config import EngineConfig
    from vllm_mlx.engine.engine import LLMEngine
    from vllm_mlx.engine.request import GenerationRequest, SamplingParams
    from vllm_mlx.models.loader import load_model

    peers, done = RecordingPeers(), threading.Event()
    engine = LLMEngine(lambda: load_model(str(tiny_qwen3), compute_dtype="float32"),
                       EngineConfig(speculative="off"), lambda outs: any(o.finished for o in outs) and done.set(),
                       peers=peers)
    tokenizer = engine.start().tokenizer
    try:
        engine.add_request(GenerationRequest("r", tokenizer.encode("Hello there"), SamplingParams(max_tokens=6)))
        assert done.wait(60)
        time.sleep(4 * peers.idle_wait)
        assert engine.alive
        peers.lost = True  # the followers are gone: the engine is no longer alive
        assert not engine.alive
    finally:
        engine.shutdown()
    kinds = [kind for kind, _ in peers.calls]
    assert kinds[0] == "budget" and peers.calls[0][1] == engine.prefix_cache.stats.budget_bytes
    assert kinds[-1] == "stop" and kinds.count("budget") == kinds.count("stop") == 1
    records = [r for kind, r in peers.calls if kind == "record"]
    steps = [r for r in records if r.schedule is not None]
    assert len(steps) == engine.stats.steps and len(steps) >= 6
    assert any(r.tokens for r in steps)  # the decode forward's tokens travel with the record
    assert any(r.schedule is None for r in records[records.index(steps[-1]):])  # a heartbeat after the work
    assert {"an engine step", "a heartbeat", "the stop message"} <= set(peers.guarded)
