"""Memory saved and output changed by --kv-cache-bits, on the demo model.

    .venv/bin/python benchmarks/kv_bits_effect.py

Caches a 1024-token prompt's blocks at 32 (plain float32), 8 and 4 bits, then
prefills a 16-token continuation on top of the cached prefix and compares the
final logits (and greedy continuations of 32 tokens) with a fresh prefill.
"""

from __future__ import annotations

import vllm_mlx  # noqa: F401  (OpenBLAS before mlx)
import mlx.core as mx
from mlx_lm.models.cache import make_prompt_cache

from vllm_mlx.engine.model_runner import ModelRunner
from vllm_mlx.engine.prefix_cache import PrefixCache
from vllm_mlx.engine.request import GenerationRequest
from vllm_mlx.engine.sequence import Sequence
from vllm_mlx.models.loader import load_model
from vllm_mlx.models.demo import ensure_demo_model


def greedy(runner: ModelRunner, seq: Sequence, first_logits: mx.array, n: int) -> list[int]:
    out, logits = [], first_logits
    for _ in range(n):
        tok = int(mx.argmax(logits[0]).item())
        out.append(tok)
        logits = runner.model(mx.array([[tok]]), cache=seq.cache)[:, -1, :]
    return out


def main() -> None:
    model = load_model(str(ensure_demo_model()), compute_dtype="float32").model
    runner = ModelRunner(model)
    prompt = mx.random.randint(10, 4000, (1024,), key=mx.random.key(0)).tolist()
    follow = prompt + mx.random.randint(10, 4000, (16,), key=mx.random.key(1)).tolist()
    fresh = Sequence(GenerationRequest("f", follow), None, set())
    ref_logits = runner.prefill(fresh, len(follow))
    ref_tokens = greedy(runner, fresh, ref_logits, 32)
    base = Sequence(GenerationRequest("b", prompt), None, set())
    runner.prefill(base, len(prompt))
    print("| KV storage | cached bytes | vs float32 | max abs logit diff | same greedy tokens (of 32) |")
    print("|---|---|---|---|---|")
    plain_bytes = None
    for bits in (None, 8, 4):
        cache = PrefixCache(make_prompt_cache(model), 1 << 34, "kvbits", block_size=64, kv_bits=bits)
        cache.insert(prompt, base.cache)
        plain_bytes = plain_bytes or cache.stats.bytes
        seq = Sequence(GenerationRequest("h", follow), None, set())
        hit = cache.lookup(follow)
        seq.cache, seq.num_computed = hit.cache, hit.num_tokens
        logits = runner.prefill(seq, len(follow))
        diff = mx.abs(logits - ref_logits).max().item()
        same = sum(a == b for a, b in zip(greedy(runner, seq, logits, 32), ref_tokens))
        label = "float32" if bits is None else f"{bits}-bit"
        print(f"| {label} | {cache.stats.bytes / 2**20:.2f} MiB | {cache.stats.bytes / plain_bytes:.2f} | "
              f"{diff:.4f} | {same} |")


if __name__ == "__main__":
    main()
