"""The CPU backend's decode modules (models/cpu_decode.py): fused norms and RoPEs, few-row linear
layers. The same logits to the bit, in every dtype, for single streams, batches with left padding and
verify-sized steps; fewer operations per step."""

from __future__ import annotations

import re
import shutil

import mlx.core as mx
import mlx.nn as nn
import pytest
from mlx_lm.models import llama, qwen3
from mlx_lm.models.cache import KVCache, make_prompt_cache

from vllm_mlx.models import cpu_decode
from vllm_mlx.models.cpu_decode import FewRowsLinear, FusedRMSNorm, FusedRoPE, swap_cpu_decode_modules
from vllm_mlx.platform import BlasStatus

ONE_THREAD = BlasStatus("libopenblas.so.0", "OpenBLAS, one thread", threads=1)  # the linear swap, whatever BLAS
# this machine loaded (the products are bit-identical with MLX's reference BLAS too)


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
    assert swap_cpu_decode_modules(fused, ONE_THREAD) > 0
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
    assert swap_cpu_decode_modules(model) == 0 and type(model.layers[0]) is OwnNorm
    assert swap_cpu_decode_modules(nn.Linear(4, 4)) == 0


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
def test_families_logits_are_bit_identical(tmp_path, arch, monkeypatch):
    """The families whose modules include mlx's own RMSNorm, RoPE or Linear (hybrid recurrent layers,
    sliding windows, biases), loaded as the server loads them: the same logits with and without the
    swap. Every linear layer is swapped here, however small (the tiny models' are below LARGE_WEIGHT)."""
    from vllm_mlx.models.loader import load_model
    from vllm_mlx_testing.arch_models import build_arch_model

    monkeypatch.setattr(cpu_decode, "LARGE_WEIGHT", 0)
    monkeypatch.setattr(cpu_decode, "LARGE_INPUT", 0)

    path = build_arch_model(tmp_path / arch, arch)
    plain, fused = (load_model(str(path), compute_dtype="float32").model for _ in range(2))
    assert swap_cpu_decode_modules(fused, ONE_THREAD) > 0
    steps = [1] * 5 + [3, 1]
    for x, y in zip(_logits(plain, [[5, 9, 13, 2, 7]], steps), _logits(fused, [[5, 9, 13, 2, 7]], steps)):
        assert mx.array_equal(x, y).item()


@pytest.mark.parametrize("bias", [False, True])
def test_few_rows_linear_is_bit_identical(bias):
    """(W @ x.T).T against x @ W.T, with and without a bias, for every row count it serves (and the
    shapes a decode or verify step gives it); more rows than FEW_ROWS take nn.Linear's own path."""
    mx.random.seed(3)
    plain = nn.Linear(1024, 1024 + 3, bias=bias)
    swapped = nn.Linear(1024, 1024 + 3, bias=bias)
    swapped.update(plain.parameters())
    assert swap_cpu_decode_modules(swapped, ONE_THREAD) == 1 and type(swapped) is FewRowsLinear
    for shape in [(1, 1), (1, 5), (3, 1), (7, 4), (64, 1), (16, 4), (1, 65), (2, 300)]:
        x = mx.random.normal((*shape, 1024))
        a, b = plain(x), swapped(x)
        assert a.shape == b.shape == (*shape, 1024 + 3) and mx.array_equal(a, b).item(), shape
    calls = []
    own = nn.Linear.__call__
    with pytest.MonkeyPatch.context() as patch:  # a long step runs nn.Linear's own product
        patch.setattr(nn.Linear, "__call__", lambda self, x: calls.append(x.shape) or own(self, x))
        swapped(mx.random.normal((1, 65, 1024)))
        swapped(mx.random.normal((1, 2, 1024)))
    assert calls == [(1, 65, 1024)]


def test_only_large_float32_linear_layers_are_swapped(monkeypatch):
    monkeypatch.setattr(cpu_decode, "HUGE_WEIGHT", 1 << 21)  # a 151936 x 1024 head, at this scale
    huge = nn.Linear(1024, 2049)  # read from memory as slowly either way
    small = nn.Linear(1024, 256)  # a quarter of LARGE_WEIGHT: the call's fixed costs dominate
    narrow = nn.Linear(512, 4096)  # large, but fewer input features than LARGE_INPUT: little to gain
    half = nn.Linear(1024, 1024)
    half.set_dtype(mx.bfloat16)  # not a BLAS product on the CPU
    quantized = nn.QuantizedLinear(1024, 1024)
    class OwnLinear(nn.Linear):
        pass
    own = OwnLinear(1024, 1024)
    model = nn.Sequential(huge, small, narrow, half, quantized, own, nn.Linear(1024, 2048))
    assert swap_cpu_decode_modules(model, ONE_THREAD) == 1
    assert [type(m) for m in model.layers] == [nn.Linear] * 4 + [nn.QuantizedLinear, OwnLinear, FewRowsLinear]
    cpu_decode.set_swapped(model, False)
    assert type(model.layers[-1]) is nn.Linear
    cpu_decode.set_swapped(model, True, cpu_decode.DECODE_FORMS[:2])  # norms and RoPEs only
    assert type(model.layers[-1]) is nn.Linear
    cpu_decode.set_swapped(model, True)
    assert type(model.layers[-1]) is FewRowsLinear


def test_a_model_with_large_layers_decodes_bit_identically():
    """A Qwen3 whose attention and MLP weights are over LARGE_WEIGHT: every step's logits the same, one
    row and a left-padded batch, decode and verify-sized steps."""
    def make():
        mx.random.seed(5)
        return qwen3.Model(qwen3.ModelArgs(model_type="qwen3", hidden_size=1024, num_hidden_layers=1,
                                           intermediate_size=1024, num_attention_heads=8, num_key_value_heads=8,
                                           rms_norm_eps=1e-6, vocab_size=97, max_position_embeddings=256,
                                           rope_theta=10000.0, head_dim=128, tie_word_embeddings=True))

    plain, swapped = _twin(make, mx.float32)
    assert sum(type(m) is FewRowsLinear for _, m in swapped.named_modules()) == 7
    steps = [1] * 3 + [5, 1]
    for rows in (1, 3):
        prompts = [[5, 9, 13, 2, 7, 11], [3, 4], [8, 1, 6, 2]][:rows]
        for x, y in zip(_logits(plain, prompts, steps), _logits(swapped, prompts, steps)):
            assert mx.array_equal(x, y).item()


def test_how_many_rows_take_the_few_row_product():
    """Only with OpenBLAS (MLX's reference BLAS takes as long either way); fewer rows where OpenBLAS
    splits its products over threads; the layer keeps the limit it was swapped with."""
    assert cpu_decode.few_rows_limit(BlasStatus(None, "reference BLAS")) == 0
    assert cpu_decode.few_rows_limit(ONE_THREAD) == cpu_decode.FEW_ROWS
    two = BlasStatus("libopenblas.so.0", "OpenBLAS, two threads", threads=2)
    assert cpu_decode.few_rows_limit(two) == cpu_decode.SHARED_FEW_ROWS < cpu_decode.FEW_ROWS
    assert swap_cpu_decode_modules(nn.Linear(1024, 1024), BlasStatus(None, "reference BLAS")) == 0
    layer = nn.Linear(1024, 1024)
    assert swap_cpu_decode_modules(layer, two) == 1 and layer.few_rows == cpu_decode.SHARED_FEW_ROWS
    calls = []
    own = nn.Linear.__call__
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(nn.Linear, "__call__", lambda self, x: calls.append(x.shape) or own(self, x))
        for rows in (1, 3, 4):
            layer(mx.zeros((rows, 1, 1024)))
    assert calls == [(4, 1, 1024)]
