"""Fewer, fused operations for the short steps of decoding on MLX's CPU backend.

``mx.fast.rms_norm`` and ``mx.fast.rope`` have kernels of their own on Metal and CUDA; on the CPU
they run their fallbacks, a handful of elementwise operations each (a RoPE about a dozen). A decode
step of a small model is mostly such operations, and on the CPU every operation costs its dispatch
on the calling thread and on MLX's worker: the demo model's one-token step is ~650 operations, 256
of them inside these fallbacks. Under ``mx.compile`` MLX fuses each fallback's elementwise tail into
one kernel (compiled by MLX with the system's C++ compiler, cached on disk; without a compiler MLX
runs the operations unfused), with the same operations in the same order: the results are
bit-identical (a test compares logits in float32, bfloat16 and float16).

Only steps of at most :data:`SHORT_STEP` positions per row use the compiled RoPE -- decode and
verify steps, whose shapes repeat -- so the compile cache holds one entry per batch size and step
length, not one per prompt chunk; the compiled norm only steps of at most :data:`FEW_POSITIONS`
rows x positions (single streams), where it pays. Only mlx's own ``nn.RMSNorm`` and ``nn.RoPE`` are changed (their
class is swapped for a subclass, the weights stay where they are); a model's own norm or RoPE
classes are left as they are.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import mlx.nn as nn

SHORT_STEP = 16  # positions per row up to which a step uses the compiled RoPE
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


def fuse_cpu_fallbacks(model: nn.Module) -> int:
    """Swap the model's ``nn.RMSNorm`` and ``nn.RoPE`` modules for their fused forms when this thread
    computes on the CPU (elsewhere they have kernels of their own); returns how many were swapped.
    Call it on the thread that runs the model."""
    if mx.default_device() != mx.cpu or not isinstance(model, nn.Module):
        return 0
    norm, rope = mx.compile(_rms_norm), mx.compile(_rope)  # one compile cache per model, freed with it
    swapped = 0
    for _, module in model.named_modules():
        if type(module) is nn.RMSNorm:
            module.__class__, compiled = FusedRMSNorm, norm
        elif type(module) is nn.RoPE:
            module.__class__, compiled = FusedRoPE, rope
        else:
            continue
        object.__setattr__(module, "compiled", compiled)
        swapped += 1
    return swapped


def set_fused(model: nn.Module, fused: bool) -> None:
    """Switch the modules :func:`fuse_cpu_fallbacks` swapped back to mlx's own classes (``fused``
    False), or to their fused forms again (their compiled functions are kept): a benchmark's
    reference runs the same model both ways."""
    classes = ((FusedRMSNorm, nn.RMSNorm), (FusedRoPE, nn.RoPE))
    for _, module in model.named_modules():
        if "compiled" in module.__dict__:
            for fused_class, plain_class in classes:
                if type(module) in (fused_class, plain_class):
                    module.__class__ = fused_class if fused else plain_class
