"""How close two computations of the same logits must be, by backend and dtype.

Different chunkings of a prompt (a cache restore then the rest, against one fresh prefill) sum in
another order, so logits agree only to the precision the backend gives: float32 on the CPU agrees
to about 1e-5, float32 on a GPU (other kernels, fused reductions) to a few 1e-4, and half precision
to about 1e-2 of the logits' scale. Quantized cached keys/values add their own error.
"""

from __future__ import annotations

import mlx.core as mx

# Relative tolerance (of the logits' largest magnitude, at least 1) by (on a GPU, dtype).
_BASE = {
    (False, "float32"): 1e-4,
    (True, "float32"): 2e-3,
    (False, "float16"): 3e-2,
    (True, "float16"): 3e-2,
    (False, "bfloat16"): 6e-2,
    (True, "bfloat16"): 6e-2,
}
_KV_BITS = {8: 0.05, 4: 0.5}


def on_gpu() -> bool:
    return mx.default_device() == mx.gpu


def logits_tolerance(dtype: mx.Dtype | str, kv_bits: int | None = None) -> float:
    """The relative tolerance for comparing two logit vectors computed in ``dtype``."""
    name = str(dtype).replace("mlx.core.", "")
    base = _BASE.get((on_gpu(), name), 6e-2)
    return base + _KV_BITS.get(kv_bits or 0, 0.0)


def logits_close(a: mx.array, b: mx.array, kv_bits: int | None = None) -> tuple[bool, float]:
    """Whether ``a`` and ``b`` agree within the tolerance; and their largest absolute difference."""
    a32, b32 = a.astype(mx.float32), b.astype(mx.float32)
    diff = mx.max(mx.abs(a32 - b32)).item()
    scale = max(1.0, mx.max(mx.abs(b32)).item())
    return diff <= logits_tolerance(a.dtype, kv_bits) * scale, diff


def vector_tolerance(dtype: mx.Dtype | str = "float32") -> float:
    """Absolute tolerance for unit-scale vectors (embeddings) computed two ways in ``dtype``."""
    return logits_tolerance(dtype) / 5
