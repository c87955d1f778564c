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


def bare_loop(model_dir: str, batch: int, tokens: int, repeats: int, prompt_len: int) -> list[float]:
    """Decode tokens/s of the bare mlx-lm batched loop (vllm_mlx.bench.ceiling), after one warm-up."""
    from vllm_mlx.bench.ceiling import Ceiling

    ceiling = Ceiling(model_dir)
    ceiling.batched_decode(batch, tokens, prompt_len)  # warm-up
    return [ceiling.batched_decode(batch, tokens, prompt_len, seed=i + 1).decode_tps for i in range(repeats)]


def server_runs(base_url: str, concurrency: int, tokens: int, repeats: int, warm: bool = True) -> tuple[list, list, list]:
    """B concurrent streams: (aggregate tok/s, median per-stream decode tok/s, median TTFT ms) per repeat."""
    from vllm_mlx.bench.cli import run_async
    from vllm_mlx.bench.targets import HttpTarget

    async def run() -> tuple[float, float, float]:
        async with HttpTarget(base_url, "m") as target:
            t0 = time.perf_counter()
            records = await asyncio.gather(*(
                target.chat([{"role": "user", "content": f"Benchmark prompt number {i}: tell a story."}], tokens)
                for i in range(concurrency)))
            wall = time.perf_counter() - t0
        total = sum(r.completion_tokens for r in records)
        per_stream = statistics.median(1 / r.tpot for r in records if r.tpot)  # tpot: seconds per token
        ttft_ms = statistics.median(r.ttft * 1000 for r in records)
        return total / wall, per_stream, ttft_ms

    if warm:
        run_async(run())
    got = [run_async(run()) for _ in range(repeats)]
    return [g[0] for g in got], [g[1] for g in got], [g[2] for g in got]


def fmt(values: list[float]) -> str:
    return f"{statistics.median(values):8.1f} ({min(values):.1f}-{max(values):.1f})"


def measure(args, blas: str) -> dict:
    """Bare loop and server measured alternately, so both see the same machine conditions."""
    env = {**os.environ, "VLLM_MLX_BLAS": blas, "HF_HUB_OFFLINE": "1"}
    keys = ("bare", "server", "server_per_stream", "ttft", "ratio")
    results: dict = {k: {c: [] for c in args.concurrency} for k in keys}
    from vllm_mlx.bench.servers import vllm_mlx_server

    with tempfile.TemporaryDirectory() as tmp:
        server = vllm_mlx_server(args.model, Path(tmp) / "log", "--max-num-seqs", str(max(args.concurrency)),
                                 "--speculative", "off", env={"VLLM_MLX_BLAS": blas})
        try:
            server.wait_ready()
            for c in args.concurrency:
                server_runs(server.url, c, args.tokens, 0)  # warm-up
            for _ in range(args.repeats):
                for c in args.concurrency:
                    out = subprocess.run(
                        [sys.executable, __file__, "--bare-only", "--model", args.model, "--batch", str(c),
                         "--tokens", str(args.tokens), "--repeats", "1"],
                        env=env, capture_output=True, text=True, check=True,
                    )
                    bare = json.loads(out.stdout.strip().splitlines()[-1])[0]
                    agg, per, ttft = (v[0] for v in server_runs(server.url, c, args.tokens, 1, warm=False))
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
        from vllm_mlx.models.demo import ensure_demo_model

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
