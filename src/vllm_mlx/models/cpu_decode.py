"""The short steps of decoding on MLX's CPU backend: fewer operations, and matmuls that suit BLAS.

**Norms and RoPEs.** ``mx.fast.rms_norm`` and ``mx.fast.rope`` have kernels of their own on Metal and
CUDA; on the CPU they run their fallbacks, a handful of elementwise operations each (a RoPE about a
dozen). A decode step of a small model is mostly such operations, and on the CPU every operation
costs its dispatch on the calling thread and on MLX's worker: the demo model's one-token step is ~650
operations, 256 of them inside these fallbacks. Under ``mx.compile`` MLX fuses each fallback's
elementwise tail into one kernel (compiled by MLX with the system's C++ compiler, cached on disk;
without a compiler MLX runs the operations unfused), with the same operations in the same order: the
results are bit-identical (a test compares logits in float32, bfloat16 and float16).

Only steps of at most :data:`SHORT_STEP` positions per row use the compiled RoPE -- decode and
verify steps, whose shapes repeat -- so the compile cache holds one entry per batch size and step
length, not one per prompt chunk; the compiled norm only steps of at most :data:`FEW_POSITIONS`
rows x positions (single streams), where it pays.

**Linear layers.** ``nn.Linear`` computes ``x @ W.T``. On the CPU that is one BLAS ``sgemm`` whose
second operand is the whole weight, and for the few rows of a decode step OpenBLAS spends most of the
call on the weight (2.5x the time of the same product written ``(W @ x.T).T`` for a 1024 x 3072 weight
and one row, 1.5x at 16 rows; docs/benchmarks/engine-core.md). :class:`FewRowsLinear` writes it
that way for inputs of few rows x positions (:func:`few_rows_limit`) and float32 weights of at least
:data:`LARGE_INPUT` input features and :data:`LARGE_WEIGHT` to :data:`HUGE_WEIGHT` elements (on
narrower or smaller weights the product gains less, and the extra transpose costs what it saves; a
larger weight, such as a big vocabulary's head, is read from memory as slowly either way).
Each output is the same dot product over the same inputs, and BLAS accumulates it in the same order:
the results are bit-identical, with the bias too (``addmm`` with the bias as a column).

Only mlx's own ``nn.RMSNorm``, ``nn.RoPE`` and ``nn.Linear`` are changed (their class is swapped for
a subclass, the weights stay where they are); a model's own norm or RoPE classes, quantized layers and
LoRA wrappers are left as they are (a wrapper calls the swapped layer inside it).
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import mlx.nn as nn

SHORT_STEP = 16  # positions per row up to which a step uses the compiled RoPE
FEW_ROWS = 64  # rows x positions up to which a large linear layer multiplies as (W @ x.T).T where
# OpenBLAS runs one thread ...
SHARED_FEW_ROWS = 3  # ... and where it runs several: up to 3 that was faster in every process
# measured; from 4 on, some processes ran it at half speed for their whole life (docs/benchmarks/engine-core.md)
LARGE_INPUT = 1024  # input features from which that pays (one row: 2.4-3.2x faster from 1024 on,
# 1.0-1.4x up to 768, and no faster in a whole step of the demo model's 256 -> 4096 head) ...
LARGE_WEIGHT = 1 << 20  # ... and elements (below, the call's fixed costs dominate) ...
HUGE_WEIGHT = 1 << 24  # ... up to here (64 MB): above, both forms wait on memory (128 MB weights 0.92-1.04x,
# a 151936 x 1024 head 0.82-0.87x)
FEW_POSITIONS = 4  # rows x positions up to which a step uses the compiled norm (the fused norm's
# broadcasts run slower than the plain operations on wide batches: measured even at 16 rows, slower at 64)


def _rms_norm(x: mx.array, weight: mx.array, eps: float) -> mx.array:
    return mx.fast.rms_norm(x, weight, eps)


def _rope(x: mx.array, offset: mx.array, dims: int, traditional: bool, base: float, scale: float) -> mx.array:
    return mx.fast.rope(x, dims, traditional=traditional, base=base, scale=scale, offset=offset)


class FusedRMSNorm(nn.RMSNorm):
    """``nn.RMSNorm`` whose steps of few rows and positions ((B, L, ...) inputs with B * L <=
    FEW_POSITIONS) run compiled."""

    def __call__(self, x: mx.array) -> mx.array:
        if x.ndim >= 3 and x.shape[0] * x.shape[1] <= FEW_POSITIONS:
            return self.compiled(x, self["weight"], self.eps)
        return super().__call__(x)


class FusedRoPE(nn.RoPE):
    """``nn.RoPE`` whose short steps ((B, H, L, D) inputs with L <= SHORT_STEP) run compiled; an
    integer offset is passed as an array, so the compiled form is not traced again at every position."""

    def __call__(self, x: mx.array, offset: Any = 0) -> mx.array:
        if x.ndim >= 3 and x.shape[-2] <= SHORT_STEP:
            if not isinstance(offset, mx.array):
                offset = mx.array(offset)
            return self.compiled(x, offset, self.dims, self.traditional, self.base, self.scale)
        return super().__call__(x, offset)


class FewRowsLinear(nn.Linear):
    """``nn.Linear`` whose inputs of few rows multiply as ``(W @ x.T).T``: the same numbers, a faster
    BLAS call (module docstring)."""

    def __call__(self, x: mx.array) -> mx.array:
        rows = x.size // x.shape[-1] if x.ndim else 0
        if not 0 < rows <= self.few_rows:
            return super().__call__(x)
        flat = x.reshape(rows, x.shape[-1]).T
        if "bias" in self:
            y = mx.addmm(self["bias"][:, None], self["weight"], flat)
        else:
            y = self["weight"] @ flat
        return y.T.reshape(*x.shape[:-1], y.shape[0])


def few_rows_limit(blas: Any = None) -> int:
    """Rows x positions up to which :class:`FewRowsLinear` multiplies as ``(W @ x.T).T`` with this BLAS
    (``blas``: a :class:`~vllm_mlx.platform.BlasStatus`, the one loaded by default): none without
    OpenBLAS (with MLX's reference BLAS both forms take the same time), :data:`FEW_ROWS` when OpenBLAS
    runs one thread, :data:`SHARED_FEW_ROWS` when it runs several."""
    if blas is None:
        from .. import BLAS_STATUS as blas
    if not blas.path:
        return 0
    return FEW_ROWS if blas.threads <= 1 else SHARED_FEW_ROWS


def _few_rows_pays(module: nn.Linear) -> bool:
    weight = module["weight"]
    return (weight.dtype == mx.float32 and weight.shape[-1] >= LARGE_INPUT
            and LARGE_WEIGHT <= weight.size <= HUGE_WEIGHT)


def swap_cpu_decode_modules(model: nn.Module, blas: Any = None) -> int:
    """Swap the model's ``nn.RMSNorm`` and ``nn.RoPE`` modules for their fused forms, and its large
    float32 ``nn.Linear`` layers for :class:`FewRowsLinear`, when this thread computes on the CPU
    (elsewhere norms and RoPEs have kernels of their own, and matmuls do not go through BLAS);
    returns how many were swapped. Call it on the thread that runs the model; ``blas`` as
    :func:`few_rows_limit` takes it."""
    if mx.default_device() != mx.cpu or not isinstance(model, nn.Module):
        return 0
    few_rows = few_rows_limit(blas)
    norm, rope = mx.compile(_rms_norm), mx.compile(_rope)  # one compile cache per model, freed with it
    swapped = 0
    for _, module in model.named_modules():
        if type(module) is nn.RMSNorm:
            module.__class__, compiled = FusedRMSNorm, norm
        elif type(module) is nn.RoPE:
            module.__class__, compiled = FusedRoPE, rope
        elif type(module) is nn.Linear and few_rows and _few_rows_pays(module):
            module.__class__, compiled = FewRowsLinear, None  # nothing compiled: the attribute marks the swap
            object.__setattr__(module, "few_rows", few_rows)
        else:
            continue
        object.__setattr__(module, "compiled", compiled)
        swapped += 1
    return swapped


DECODE_FORMS = ((FusedRMSNorm, nn.RMSNorm), (FusedRoPE, nn.RoPE), (FewRowsLinear, nn.Linear))  # (decode, mlx's own)


def set_swapped(model: nn.Module, swapped: bool, forms: Any = DECODE_FORMS) -> None:
    """Switch the modules :func:`swap_cpu_decode_modules` swapped, of the given ``forms`` (pairs of
    :data:`DECODE_FORMS`), back to mlx's own classes (``swapped`` False), or to their decode forms
    again (their compiled functions are kept): a benchmark's reference runs the same model both ways."""
    for _, module in model.named_modules():
        if "compiled" in module.__dict__:
            for decode_class, plain_class in forms:
                if type(module) in (decode_class, plain_class):
                    module.__class__ = decode_class if swapped else plain_class
