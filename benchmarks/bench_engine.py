"""Decode throughput: the server at concurrency 1/4/16 vs a bare mlx-lm forward loop (the ceiling).

    .venv/bin/python benchmarks/bench_engine.py [--model DIR] [--tokens 128] [--repeats 3]

Each setting is measured after a warm-up, ``--repeats`` times, the bare loop and
the server alternating (so both see the same machine conditions); the median is
reported with the min-max range, and server/bare is the median of the per-repeat
ratios. The bare loop is mlx-lm's model called on a
batch of B rows with a KV cache and greedy argmax (pipelined with async_eval,
as mlx_lm.generate does): no server, no scheduling, no detokenizing. The
server figures are aggregate completion tokens per second of wall time seen by
B concurrent streaming clients, and the per-stream decode rate after the first
token. Both use the same model folder and dtype. Runs once with OpenBLAS and
once with MLX's reference BLAS (VLLM_MLX_BLAS=off).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def bare_loop(model_dir: str, batch: int, tokens: int, repeats: int, prompt_len: int) -> list[float]:
    import vllm_mlx  # noqa: F401  (OpenBLAS first)
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache

    from vllm_mlx.models.loader import load_model

    model = load_model(model_dir, compute_dtype="float32").model
    prompt = mx.random.randint(10, 1000, (batch, prompt_len))

    def run() -> float:
        cache = make_prompt_cache(model)
        y = mx.argmax(model(prompt, cache=cache)[:, -1], axis=-1)
        mx.eval(y)
        start = time.perf_counter()
        for _ in range(tokens):
            nxt = mx.argmax(model(y[:, None], cache=cache)[:, -1], axis=-1)
            mx.async_eval(nxt)
            y = nxt
        mx.eval(y)
        return batch * tokens / (time.perf_counter() - start)

    run()  # warm-up
    return [run() for _ in range(repeats)]


async def _one_stream(client, base_url: str, tokens: int, prompt: str) -> tuple[int, float, float, float]:
    """One streaming chat request, read with a plain SSE reader (cheap on the shared CPU)."""
    body = {"model": "m", "messages": [{"role": "user", "content": prompt}], "max_tokens": tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True}
    start = time.perf_counter()
    first = last = None
    count = 0
    async with client.stream("POST", f"{base_url}/v1/chat/completions", json=body) as resp:
        async for line in resp.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            now = time.perf_counter()
            chunk = json.loads(line[6:])
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                first = first or now
                last = now
            if chunk.get("usage"):
                count = chunk["usage"]["completion_tokens"]
    return count, start, first, last


def server_runs(base_url: str, concurrency: int, tokens: int, repeats: int, warm: bool = True) -> tuple[list, list, list]:
    import httpx

    async def run() -> tuple[float, float, float]:
        async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=256)) as client:
            t0 = time.perf_counter()
            results = await asyncio.gather(
                *(_one_stream(client, base_url, tokens, f"Benchmark prompt number {i}: tell a story.")
                  for i in range(concurrency))
            )
            wall = time.perf_counter() - t0
        total = sum(r[0] for r in results)
        per_stream = statistics.median((r[0] - 1) / (r[3] - r[2]) for r in results)
        ttft_ms = statistics.median((r[2] - r[1]) * 1000 for r in results)
        return total / wall, per_stream, ttft_ms

    if warm:
        asyncio.run(run())
    got = [asyncio.run(run()) for _ in range(repeats)]
    return [g[0] for g in got], [g[1] for g in got], [g[2] for g in got]


def fmt(values: list[float]) -> str:
    return f"{statistics.median(values):8.1f} ({min(values):.1f}-{max(values):.1f})"


def measure(args, blas: str) -> dict:
    """Bare loop and server measured alternately, so both see the same machine conditions."""
    env = {**os.environ, "VLLM_MLX_BLAS": blas, "HF_HUB_OFFLINE": "1"}
    keys = ("bare", "server", "server_per_stream", "ttft", "ratio")
    results: dict = {k: {c: [] for c in args.concurrency} for k in keys}
    from conftest import ServerProcess

    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess([args.model, "--max-num-seqs", str(max(args.concurrency))], Path(tmp) / "log", env)
        try:
            server.wait_ready()
            for c in args.concurrency:
                server_runs(server.base_url, c, args.tokens, 0)  # warm-up
            for _ in range(args.repeats):
                for c in args.concurrency:
                    out = subprocess.run(
                        [sys.executable, __file__, "--bare-only", "--model", args.model, "--batch", str(c),
                         "--tokens", str(args.tokens), "--repeats", "1"],
                        env=env, capture_output=True, text=True, check=True,
                    )
                    bare = json.loads(out.stdout.strip().splitlines()[-1])[0]
                    agg, per, ttft = (v[0] for v in server_runs(server.base_url, c, args.tokens, 1, warm=False))
                    for key, value in zip(keys, (bare, agg, per, ttft, agg / bare)):
                        results[key][c].append(value)
        finally:
            server.stop()
    return results


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default=None, help="model folder (default: the demo model)")
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--blas", nargs="+", default=["auto", "off"])
    p.add_argument("--bare-only", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--prompt-len", type=int, default=24)
    args = p.parse_args()
    if args.bare_only:
        print(json.dumps(bare_loop(args.model, args.batch, args.tokens, args.repeats, args.prompt_len)))
        return
    if args.model is None:
        from vllm_mlx.testing.demo import ensure_demo_model

        args.model = str(ensure_demo_model())
    print(f"model: {args.model}; {args.tokens} tokens per stream; median (min-max) of {args.repeats} runs after warm-up")
    for blas in args.blas:
        r = measure(args, blas)
        print(f"\nBLAS={blas}")
        print("| concurrency | bare mlx-lm loop tok/s | server aggregate tok/s | server/bare (range) "
              "| per-stream decode tok/s | median TTFT ms |")
        print("|---|---|---|---|---|---|")
        for c in args.concurrency:
            ratio = r["ratio"][c]
            print(f"| {c} | {fmt(r['bare'][c])} | {fmt(r['server'][c])} | {statistics.median(ratio):.2f} "
                  f"({min(ratio):.2f}-{max(ratio):.2f}) | {fmt(r['server_per_stream'][c])} | {fmt(r['ttft'][c])} |")


if __name__ == "__main__":
    main()
