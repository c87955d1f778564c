"""The prefix cache's disk tier treats its files as untrusted input: checksums, shapes, structure."""

from __future__ import annotations

import json

import mlx.core as mx
import pytest
from mlx_lm.models.cache import make_prompt_cache

from vllm_mlx.engine.block_store import BlockDiskStore, tensor_checksum
from vllm_mlx.engine.model_runner import ModelRunner
from vllm_mlx.engine.numerics import logits_close
from vllm_mlx.engine.prefix_cache import PrefixCache, reference_shapes
from vllm_mlx.engine.request import GenerationRequest
from vllm_mlx.engine.sequence import Sequence
from vllm_mlx.models.loader import load_model


def _prefill(runner: ModelRunner, tokens: list[int], cache=None, start: int = 0):
    seq = Sequence(GenerationRequest("r", tokens), set())
    seq.cache, seq.num_computed = cache, start
    return runner.prefill(seq, len(tokens) - start), seq.cache


def _cache(model, folder, block_size=16) -> PrefixCache:
    disk = BlockDiskStore(folder, "fp", 1 << 30, reference_shapes(model))
    return PrefixCache(make_prompt_cache(model), 1 << 30, "fp", block_size=block_size, disk=disk)


@pytest.fixture(scope="module")
def qwen3_model(tiny_qwen3):
    return load_model(str(tiny_qwen3), compute_dtype="float32").model


@pytest.fixture(scope="module")
def mamba_model():
    from mlx_lm.models import mamba

    mx.random.seed(0)
    args = mamba.ModelArgs(model_type="mamba", vocab_size=300, hidden_size=32, intermediate_size=64, state_size=8,
                           num_hidden_layers=2, conv_kernel=4, use_bias=False, use_conv_bias=True, time_step_rank=4)
    model = mamba.Model(args)
    mx.eval(model.parameters())
    return model


def _rewrite(path, change) -> None:
    """Load a cache file, let ``change`` edit its arrays/metadata, save it back with a valid checksum."""
    arrays, meta = mx.load(str(path), return_metadata=True)
    arrays, meta = change(dict(arrays), dict(meta))
    meta["checksum"] = tensor_checksum(arrays)
    mx.save_safetensors(str(path), arrays, metadata=meta)


def test_blocks_survive_a_restart_and_bad_files_are_refused(qwen3_model, tmp_path):
    runner = ModelRunner(qwen3_model)
    prompt = list(range(10, 90))  # 5 blocks of 16
    _, kv = _prefill(runner, prompt)
    _cache(qwen3_model, tmp_path).insert(prompt, kv)
    files = sorted(p for p in tmp_path.rglob("*.safetensors"))
    assert len(files) == 5

    fresh = _cache(qwen3_model, tmp_path)  # a restart: only the disk can hit
    assert fresh.lookup(prompt + [5]).num_tokens == 80 and fresh.disk.reads == 5

    by_tokens = {json.loads(mx.load(str(f), return_metadata=True)[1]["tokens"])[0]: f for f in files}
    # a flipped byte in the tensor data: the checksum no longer matches
    raw = bytearray(by_tokens[58].read_bytes())
    raw[-3] ^= 0x40
    by_tokens[58].write_bytes(bytes(raw))
    # valid metadata and checksum, but keys/values of the wrong shape (the engine used to crash on these)
    _rewrite(by_tokens[42], lambda a, m: ({k: v[:, :1] for k, v in a.items()}, m))
    fresh = _cache(qwen3_model, tmp_path)
    hit = fresh.lookup(prompt + [5])
    assert hit.num_tokens == 32 and fresh.disk.rejected == 1  # block 3 (tokens 42..) refused, stops the walk
    assert not by_tokens[42].exists()
    again = _cache(qwen3_model, tmp_path)
    assert again.lookup(prompt + [5]).num_tokens == 32  # the refused file is gone; block 2 still reused
    expected, _ = _prefill(runner, prompt + [5])
    got, _ = _prefill(runner, prompt + [5], again.lookup(prompt + [5]).cache, 32)
    assert logits_close(got, expected)[0]


def test_checkpoints_persist_and_a_tampered_state_is_refused(mamba_model, tmp_path):
    runner = ModelRunner(mamba_model)
    turn = list(range(1, 40))
    _, state = _prefill(runner, turn)
    cache = _cache(mamba_model, tmp_path)
    cache.insert(turn, state)
    assert cache.stats.checkpoints == 1 and cache.stats.checkpoint_bytes > 0
    follow = turn + list(range(100, 120))
    expected, _ = _prefill(runner, follow)

    restarted = _cache(mamba_model, tmp_path)
    hit = restarted.lookup(follow)
    assert hit.num_tokens == len(turn) and restarted.disk.reads >= 1
    got, _ = _prefill(runner, follow, hit.cache, hit.num_tokens)
    assert logits_close(got, expected)[0]

    (ckpt,) = tmp_path.rglob("c-*.safetensors")
    _rewrite(ckpt, lambda a, m: ({k: (v[..., :2] if k.startswith("s.0.") else v) for k, v in a.items()}, m))
    tampered = _cache(mamba_model, tmp_path)
    assert tampered.lookup(follow).num_tokens == 0 and tampered.disk.rejected == 1 and not ckpt.exists()
