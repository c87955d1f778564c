"""KV-cache bytes per token of a loaded model, measured on the engine thread (for memory admission)."""

from __future__ import annotations

import logging

import mlx.core as mx
from mlx.utils import tree_flatten
from mlx_lm.models.cache import make_prompt_cache

logger = logging.getLogger(__name__)

PROBE_TOKENS = 8


def kv_bytes_per_token(model) -> int:
    """Bytes one more token adds to a sequence's cache, from the caches of a short forward.
    Recurrent layers (a fixed-size state) add nothing per token; sliding-window layers are counted
    as if they grew forever, which keeps the estimate on the safe side. 0 when it cannot be measured."""
    try:
        cache = make_prompt_cache(model)
        mx.eval(model(mx.zeros((1, PROBE_TOKENS), dtype=mx.int32), cache=cache))
        total = 0.0
        for layer in cache:
            if not hasattr(layer, "offset"):  # a fixed-size (recurrent) state: nothing per token
                continue
            # keys/values (and quantization scales) are laid out [..., tokens, dim]; buffers are
            # preallocated in steps, so divide by their allocated length, not the tokens written
            for _, a in tree_flatten(layer.state):
                if isinstance(a, mx.array) and a.ndim >= 3 and a.shape[-2]:
                    total += a.nbytes / a.shape[-2]
        return int(total + 0.5)
    except Exception:  # admission is a safeguard: never fail startup over it
        logger.warning("could not measure KV bytes per token; memory admission is off", exc_info=True)
        return 0
