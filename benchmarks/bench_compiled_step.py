"""Does compiling the whole decode step pay? One row, greedy, the bare mlx-lm loop against the same
model's step run through ``mx.compile`` over a fixed-capacity cache.

    PYTHONPATH=src python benchmarks/bench_compiled_step.py [--model PATH|demo] [--tokens 400] [--rounds 6]
        [--capacity 512] [--cpu-decode-modules]

A compiled function is traced once per input shape, and mlx-lm's KV cache grows by a position every
step; so the compiled step writes each position into preallocated keys and values
(``mx.slice_update`` at an offset passed as an array), attends over the whole capacity with a mask
of the positions written so far, and rotates with the offset as an array. Python then builds no
graph per step (the compiled tape is replayed), and MLX fuses the elementwise work; the price is
attention over the whole capacity instead of the positions written. ``--cpu-decode-modules``
first swaps in the engine's CPU decode forms (models/cpu_decode.py) for both sides.

Models whose layers call ``cache.update_and_fetch`` and ``create_attention_mask`` (Qwen3, Llama,
...). Prints the rates of interleaved rounds, their medians, and whether both sides drew the same
tokens (they must).
"""

from __future__ import annotations

import argparse
import statistics
import time

import vllm_mlx  # noqa: F401  (OpenBLAS before mlx)
import mlx.core as mx
from mlx_lm.models.cache import make_prompt_cache

from vllm_mlx.models.loader import load_model


class FixedCache:
    """Keys and values of a fixed capacity; ``offset`` (an array) is the next position to write."""

    def __init__(self, keys: mx.array, values: mx.array, offset: mx.array):
        self.keys, self.values, self.offset = keys, values, offset

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        at = mx.reshape(self.offset, (1,))
        self.keys = mx.slice_update(self.keys, keys, at, axes=(2,))
        self.values = mx.slice_update(self.values, values, at, axes=(2,))
        return self.keys, self.values

    def make_mask(self, n: int, return_array: bool = False, window_size=None) -> mx.array:
        return mx.arange(self.keys.shape[2]) <= self.offset  # one new position: all written so far


def bare_loop(model, prompt: mx.array, tokens: int) -> tuple[list[int], float]:
    """mlx-lm's own loop shape: step t+1 is launched before step t is read."""
    cache = make_prompt_cache(model)
    y = mx.argmax(model(prompt, cache=cache)[:, -1], axis=-1)
    mx.async_eval(y)
    out, start = [], None
    for i in range(tokens):
        following = mx.argmax(model(y[:, None], cache=cache)[:, -1], axis=-1)
        mx.async_eval(following)
        out.append(y.item())
        if i == 4:
            start = time.perf_counter()
        y = following
    return out, (tokens - 5) / (time.perf_counter() - start)


def compiled_loop(model, step, prompt: mx.array, tokens: int, capacity: int) -> tuple[list[int], float]:
    cache = make_prompt_cache(model)
    y = mx.argmax(model(prompt, cache=cache)[:, -1], axis=-1)
    state = []
    for c in cache:  # the prompt's keys and values, copied into the fixed-capacity arrays
        k, v = c.keys[..., : c.offset, :], c.values[..., : c.offset, :]
        full_k = mx.zeros((*k.shape[:2], capacity, k.shape[3]), k.dtype)
        full_v = mx.zeros((*v.shape[:2], capacity, v.shape[3]), v.dtype)
        full_k[..., : c.offset, :] = k
        full_v[..., : c.offset, :] = v
        state += [full_k, full_v]
    offset = prompt.shape[1]
    mx.async_eval(y)
    out, start = [], None
    for i in range(tokens):
        following, *state = step(y[:, None], mx.array(offset, mx.int32), *state)
        mx.async_eval(following)
        offset += 1
        out.append(y.item())
        if i == 4:
            start = time.perf_counter()
        y = following
    return out, (tokens - 5) / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="demo")
    p.add_argument("--tokens", type=int, default=400)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--capacity", type=int, default=512, help="positions the compiled step's cache holds")
    p.add_argument("--cpu-decode-modules", action="store_true")
    args = p.parse_args()
    if args.model == "demo":
        from vllm_mlx.models.demo.demo_model import ensure_demo_model

        args.model = str(ensure_demo_model())
    model = load_model(args.model).model
    if args.cpu_decode_modules:
        from vllm_mlx.models.cpu_decode import swap_cpu_decode_modules

        print("modules swapped:", swap_cpu_decode_modules(model))
    prompt = mx.array([[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]])
    if prompt.shape[1] + args.tokens > args.capacity:
        p.error("--capacity must hold the prompt (12) and --tokens")
    layers = len(model.layers)

    def step(tokens: mx.array, offset: mx.array, *state: mx.array):
        caches = [FixedCache(state[2 * i], state[2 * i + 1], offset) for i in range(layers)]
        token = mx.argmax(model(tokens, cache=caches)[:, -1], axis=-1)
        return (token, *[a for c in caches for a in (c.keys, c.values)])

    compiled = mx.compile(step)
    rates: dict[str, list[float]] = {"bare": [], "compiled": []}
    same = True
    for r in range(args.rounds + 1):  # the first round warms up (and traces)
        a, bare_rate = bare_loop(model, prompt, args.tokens)
        b, compiled_rate = compiled_loop(model, compiled, prompt, args.tokens, args.capacity)
        same &= a == b
        if r:
            rates["bare"].append(bare_rate)
            rates["compiled"].append(compiled_rate)
            print(f"round {r}: bare {bare_rate:.0f} tok/s, compiled {compiled_rate:.0f} tok/s", flush=True)
    ratios = [c / b for b, c in zip(rates["bare"], rates["compiled"])]
    print(f"median: bare {statistics.median(rates['bare']):.0f} tok/s, compiled "
          f"{statistics.median(rates['compiled']):.0f} tok/s, compiled/bare {statistics.median(ratios):.2f} "
          f"(device {mx.default_device()}); same tokens: {same}")


if __name__ == "__main__":
    main()
