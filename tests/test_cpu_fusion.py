"""The CPU backend's fused norm and RoPE (models/cpu_fusion.py): the same logits to the bit, in every
dtype, for single streams, batches with left padding and verify-sized steps; fewer operations per step."""

from __future__ import annotations

import re
import shutil

import mlx.core as mx
import mlx.nn as nn
import pytest
from mlx_lm.models import llama, qwen3
from mlx_lm.models.cache import KVCache, make_prompt_cache

from vllm_mlx.models.cpu_fusion import FusedRMSNorm, FusedRoPE, fuse_cpu_fallbacks


def _qwen3(seed: int = 0) -> nn.Module:
    mx.random.seed(seed)
    args = qwen3.ModelArgs(model_type="qwen3", hidden_size=64, num_hidden_layers=2, intermediate_size=128,
                           num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6, vocab_size=97,
                           max_position_embeddings=256, rope_theta=10000.0, head_dim=16, tie_word_embeddings=True)
    return qwen3.Model(args)


def _twin(make, dtype) -> tuple[nn.Module, nn.Module]:
    """Two copies of one model (same weights, in ``dtype``): plain, and fused."""
    plain, fused = make(), make()
    fused.update(plain.parameters())
    plain.set_dtype(dtype)
    fused.set_dtype(dtype)
    assert fuse_cpu_fallbacks(fused) > 0
    return plain, fused


def _logits(model: nn.Module, prompts: list[list[int]], steps: list[int]) -> list[mx.array]:
    """Prefill each prompt alone, merge them into one batch (left padding), then decode: one position
    per row, or a step of several (a verify step's shape), greedy."""
    caches = []
    out = []
    for p in prompts:
        cache = make_prompt_cache(model)
        out.append(model(mx.array([p]), cache=cache)[:, -1])
        caches.append(cache)
    batch = [KVCache.merge(list(layer)) for layer in zip(*caches)] if len(prompts) > 1 else caches[0]
    y = mx.concatenate([mx.argmax(o, axis=-1) for o in out])
    for n in steps:
        tokens = mx.repeat(y[:, None], n, axis=1)
        logits = model(tokens, cache=batch)
        out.append(logits)
        y = mx.argmax(logits[:, -1], axis=-1)
    mx.eval(out)
    return out


@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16, mx.float16])
@pytest.mark.parametrize("rows", [1, 3])
def test_fused_logits_are_bit_identical(dtype, rows):
    plain, fused = _twin(_qwen3, dtype)
    prompts = [[5, 9, 13, 2, 7, 11], [3, 4], [8, 1, 6, 2]][:rows]
    steps = [1] * 6 + [5, 1, 3] + [1] * 4  # decode steps, and verify-sized ones between them
    a, b = _logits(plain, prompts, steps), _logits(fused, prompts, steps)
    assert len(a) == len(b) == rows + len(steps)
    for x, y in zip(a, b):
        assert x.dtype == y.dtype == dtype and mx.array_equal(x, y).item()


def test_long_steps_and_other_models_are_left_alone():
    """A prompt chunk runs the plain operations (no compile entry per chunk length); a model's own
    classes (subclasses of nn.RMSNorm too) are not swapped; the swap keeps the weights in place."""
    _, fused = _twin(_qwen3, mx.float32)
    norms = [m for _, m in fused.named_modules() if isinstance(m, nn.RMSNorm)]
    ropes = [m for _, m in fused.named_modules() if isinstance(m, nn.RoPE)]
    assert norms and ropes and all(type(m) is FusedRMSNorm for m in norms) and all(type(m) is FusedRoPE for m in ropes)
    assert all(m.compiled is norms[0].compiled for m in norms)  # one compiled function per model

    calls = []
    compiled = ropes[0].compiled
    for m in ropes:
        m.compiled = lambda *a, **k: calls.append(a[0].shape) or compiled(*a, **k)
    cache = make_prompt_cache(fused)
    fused(mx.array([list(range(3, 40))]), cache=cache)  # 37 positions: longer than a verify step
    assert calls == []
    fused(mx.array([[5]]), cache=cache)
    assert len(calls) == 2 * len(fused.layers)  # queries and keys of every layer

    class OwnNorm(nn.RMSNorm):
        pass

    model = nn.Sequential(OwnNorm(8), nn.Linear(8, 8))
    assert fuse_cpu_fallbacks(model) == 0 and type(model.layers[0]) is OwnNorm
    assert fuse_cpu_fallbacks(nn.Linear(4, 4)) == 0


def test_llama_rope_and_norms_fused_too():
    def make():
        mx.random.seed(1)
        return llama.Model(llama.ModelArgs(model_type="llama", hidden_size=64, num_hidden_layers=2,
                                           intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                                           rms_norm_eps=1e-5, vocab_size=97, rope_theta=10000.0))

    plain, fused = _twin(make, mx.float32)
    prompts = [[5, 9, 13, 2, 7], [3, 4, 8]]
    for x, y in zip(_logits(plain, prompts, [1, 1, 4, 1]), _logits(fused, prompts, [1, 1, 4, 1])):
        assert mx.array_equal(x, y).item()


@pytest.mark.skipif(shutil.which("g++") is None, reason="MLX fuses on the CPU with the system's C++ compiler")
def test_a_decode_step_has_fewer_operations(tmp_path):
    plain, fused = _twin(_qwen3, mx.float32)

    def operations(model):
        cache = make_prompt_cache(model)
        model(mx.array([[5, 9, 13]]), cache=cache)
        mx.eval([c.state for c in cache])  # the prompt's graph is not part of the step's
        path = tmp_path / "step.dot"
        mx.export_to_dot(str(path), model(mx.array([[7]]), cache=cache))
        return len(re.findall(r'label ="?[A-Za-z]', path.read_text()))

    before, after = operations(plain), operations(fused)
    assert after < 0.8 * before, (before, after)


@pytest.mark.parametrize("arch", ["qwen3_5", "lfm2", "gpt_oss", "falcon_h1", "gemma3_text", "nemotron_h"])
def test_families_logits_are_bit_identical(tmp_path, arch):
    """The families whose modules include mlx's own RMSNorm or RoPE (hybrid recurrent layers, sliding
    windows), loaded as the server loads them: the same logits with and without the swap."""
    from vllm_mlx.models.loader import load_model
    from vllm_mlx_testing.arch_models import build_arch_model

    path = build_arch_model(tmp_path / arch, arch)
    plain, fused = (load_model(str(path), compute_dtype="float32").model for _ in range(2))
    assert fuse_cpu_fallbacks(fused) > 0
    steps = [1] * 5 + [3, 1]
    for x, y in zip(_logits(plain, [[5, 9, 13, 2, 7]], steps), _logits(fused, [[5, 9, 13, 2, 7]], steps)):
        assert mx.array_equal(x, y).item()
