"""The hardware ceiling the engine is measured against, on the same model folder and dtype.

* :meth:`Ceiling.batched_decode` -- a bare mlx-lm batched forward loop: the model called on B
  rows with a KV cache and greedy argmax (or mlx-lm's own sampler at a temperature), pipelined with
  ``async_eval`` as mlx_lm.generate does; no server, no scheduler, no detokenizer.
* :meth:`Ceiling.stream_generate` -- ``mlx_lm.stream_generate`` single-stream (what
  ``mlx_lm.generate`` runs), timed per yielded token.

Everything runs on the calling thread, which must be the thread that created the Ceiling
(MLX streams are per thread).
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass
class CeilingRun:
    decode_tps: float  # tokens/s after the first token (prefill excluded)
    total_tps: float  # completion tokens / time including prefill
    tokens: int


class Ceiling:
    def __init__(self, model: str):
        from .. import BLAS_STATUS
        from ..models.cpu_decode import set_swapped, swap_cpu_decode_modules
        from ..models.loader import load_model
        from ..platform import detect_backend

        backend = detect_backend(BLAS_STATUS, "auto")
        self.loaded = load_model(model, compute_dtype=backend.compute_dtype)
        self.model = self.loaded.model
        self.tokenizer = self.loaded.tokenizer
        # On the CPU the engine runs its norms and RoPEs fused and its large linear layers as few-row
        # products (models/cpu_decode.py); the loop runs mlx-lm's model as it is, and the engine's
        # modules only when asked (``fused``).
        self.fusable = swap_cpu_decode_modules(self.model)
        set_swapped(self.model, False)

    def batched_decode(self, batch: int, tokens: int, prompt_len: int = 24, seed: int = 0,
                       temperature: float = 0.0, fused: bool = False) -> CeilingRun:
        """B rows of ``prompt_len`` random tokens, prefilled together, then ``tokens`` steps: greedy, or
        drawn by ``mlx_lm.sample_utils.make_sampler(temperature)`` from the logits; ``fused``: with
        the engine's CPU decode modules (fused norms and RoPEs, few-row linear layers)."""
        from ..models.cpu_decode import set_swapped

        set_swapped(self.model, fused)
        try:
            return self._batched_decode(batch, tokens, prompt_len, seed, temperature)
        finally:
            set_swapped(self.model, False)

    def _batched_decode(self, batch: int, tokens: int, prompt_len: int, seed: int, temperature: float) -> CeilingRun:
        import mlx.core as mx
        from mlx_lm.models.cache import make_prompt_cache
        from mlx_lm.sample_utils import make_sampler

        pick = make_sampler(temp=temperature) if temperature > 0 else (lambda logits: mx.argmax(logits, axis=-1))

        mx.random.seed(seed)
        prompt = mx.random.randint(10, 1000, (batch, prompt_len))
        mx.eval(prompt)
        start = time.perf_counter()
        cache = make_prompt_cache(self.model)
        y = pick(self.model(prompt, cache=cache)[:, -1])
        mx.eval(y)
        first = time.perf_counter()
        for _ in range(tokens - 1):
            nxt = pick(self.model(y[:, None], cache=cache)[:, -1])
            mx.async_eval(nxt)
            y = nxt
        mx.eval(y)
        end = time.perf_counter()
        return CeilingRun(batch * (tokens - 1) / (end - first), batch * tokens / (end - start), batch * tokens)

    def stream_generate(self, prompt_ids: list[int], tokens: int, temperature: float = 0.0) -> CeilingRun:
        """mlx_lm.stream_generate, one stream (greedy, or mlx-lm's sampler at ``temperature``); decode
        rate from its per-token yield times."""
        from mlx_lm import stream_generate
        from mlx_lm.sample_utils import make_sampler

        start = time.perf_counter()
        times = []
        for _ in stream_generate(self.model, self.tokenizer, prompt_ids, max_tokens=tokens,
                                 sampler=make_sampler(temp=temperature)):
            times.append(time.perf_counter())
        n = len(times)
        decode = (n - 1) / (times[-1] - times[0]) if n > 1 else float("nan")
        return CeilingRun(decode, n / (times[-1] - start), n)
