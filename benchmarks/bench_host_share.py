"""How much of the machine a decode takes, thread by thread: the bare mlx-lm loop (with the engine's CPU
decode modules) and the engine in this process, on Linux (``/proc/self/task``).

On MLX's CPU backend every operation of a step costs its dispatch on the thread that evaluates the
graph and its run on MLX's worker thread, so a one-row decode keeps more than one core busy; what is
left of the machine is what an HTTP server and its clients run on. Prints, per side and row count,
decode tok/s and each kind of thread's share of a core over the decode (rounds alternate sides;
medians).

    OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/bench_host_share.py [--model demo] \
        [--rows 1 16] [--tokens 512] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import threading
import time

import vllm_mlx  # noqa: F401  (loads OpenBLAS before MLX starts)
from vllm_mlx.bench.ceiling import Ceiling
from vllm_mlx.bench.cli import bench_model
from vllm_mlx.bench.rows_bench import engine_rows, random_prompts
from vllm_mlx.bench.served_bench import stat_cpu_s
from vllm_mlx.bench.targets import EngineTarget

KINDS = ("main thread", "engine thread", "MLX workers", "others")


def thread_cpu() -> dict[int, tuple[str, float]]:
    """Each thread of this process: (its kind, CPU seconds so far). Threads Python did not start are
    MLX's (with one OpenBLAS thread, OpenBLAS starts none)."""
    out = {}
    python_threads = {t.native_id: t for t in threading.enumerate()}
    for tid in map(int, os.listdir("/proc/self/task")):
        try:
            cpu = stat_cpu_s(f"/proc/self/task/{tid}/stat")
        except OSError:  # ended meanwhile
            continue
        thread = python_threads.get(tid)
        kind = ("MLX workers" if thread is None else "main thread" if thread is threading.main_thread()
                else "engine thread" if thread.name.startswith("vllm-mlx-engine") else "others")
        out[tid] = (kind, cpu)
    return out


async def measured(run) -> tuple[float, dict[str, float]]:
    """``run()``'s tok/s and each kind of thread's share of a core meanwhile."""
    before, start = thread_cpu(), time.perf_counter()
    rate = await run()
    wall, after = time.perf_counter() - start, thread_cpu()
    shares = dict.fromkeys(KINDS, 0.0)
    for tid, (kind, cpu) in after.items():
        shares[kind] += (cpu - before.get(tid, (kind, 0.0))[1]) / wall
    return rate, shares


async def main(args) -> None:
    path = bench_model(args.model)
    ceiling = Ceiling(path)
    results: dict[tuple[str, int], list] = {}
    async with EngineTarget(path, max_num_seqs=max(args.rows), prefix_cache=False) as engine:
        vocab = engine.engine.engine.vocab_size

        async def bare(rows: int, seed: int) -> float:
            return ceiling.batched_decode(rows, args.tokens, 32, seed=seed, fused=ceiling.fusable).decode_tps

        async def in_process(rows: int, seed: int) -> float:
            return await engine_rows(engine, random_prompts(rows, 32, seed, vocab), args.tokens)

        sides = {"bare loop": bare, "engine": in_process}
        for i in range(args.rounds + 1):  # the first round warms up
            for rows in args.rows:
                for name in (sides if i % 2 == 0 else reversed(sides)):
                    out = await measured(lambda: sides[name](rows, 1000 * i + rows))
                    if i:
                        results.setdefault((name, rows), []).append(out)
    print("| side | rows | decode tok/s | " + " | ".join(KINDS) + " | cores in all | CPU µs per token |")
    print("|---|---|---|" + "---|" * (len(KINDS) + 2))
    for (name, rows), runs in results.items():
        rate = statistics.median(r for r, _ in runs)
        shares = {k: statistics.median(s[k] for _, s in runs) for k in KINDS}
        total = sum(shares.values())
        cells = " | ".join(f"{shares[k]:.2f}" for k in KINDS)
        print(f"| {name} | {rows} | {rate:.0f} | {cells} | {total:.2f} | {1e6 * total / rate:.0f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    asyncio.run(main(parser.parse_args()))
