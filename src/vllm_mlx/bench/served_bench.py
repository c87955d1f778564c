"""`vllm-mlx bench served MODEL`: what HTTP costs -- the same workload through `vllm-mlx serve` and
through the engine in this process, at several concurrencies.

Each round runs, for every concurrency C, C streaming chat completions against a `vllm-mlx serve`
process started for MODEL (same batch bound, prefix cache off on both sides) and the same C
requests submitted to an in-process engine; the order alternates between rounds and the ratios
are paired per round. Reported per side: aggregate completion tok/s (all tokens / wall time from
the first request sent to the last token), and the median time to first token (text, over HTTP).
"""

from __future__ import annotations

import asyncio
import math
import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .presets import make_prompts
from .stats import summarize
from .targets import EngineTarget, HttpTarget, StreamRecord


@dataclass
class ServedBenchOptions:
    model: str
    concurrency: tuple[int, ...] = (1, 10, 32, 64)
    tokens: int = 64
    prompt_words: int = 24
    repeat: int = 3
    warmup: int = 1
    server_args: list[str] = field(default_factory=list)  # further `vllm-mlx serve` arguments


async def one_round(target, c: int, tokens: int, words: int, seed: int) -> dict:
    prompts = make_prompts(c, words, seed)
    records: list[StreamRecord] = await asyncio.gather(
        *(target.chat([{"role": "user", "content": p}], tokens) for p in prompts))
    failed = [r.error for r in records if r.error]
    if failed:
        raise RuntimeError(f"{target.name}: request failed: {failed[0]}")
    span = max(r.end for r in records) - min(r.start for r in records)
    ttfts = [r.ttft for r in records if math.isfinite(r.ttft)]
    return {"aggregate": sum(r.completion_tokens for r in records) / span,
            "ttft_ms": 1e3 * statistics.median(ttfts) if ttfts else float("nan")}


async def run_served_bench(opts: ServedBenchOptions, progress=None) -> dict:
    from .servers import vllm_mlx_server

    batch = max(opts.concurrency)
    log = Path(tempfile.mkdtemp(prefix="vllm-mlx-bench-")) / "server.log"
    server = vllm_mlx_server(opts.model, log, "--max-num-seqs", str(batch), "--no-prefix-cache",
                             "--log-level", "warning", *opts.server_args)
    rounds: list[dict] = []
    try:
        await asyncio.to_thread(server.wait_ready)
        async with HttpTarget(server.url) as http, \
                EngineTarget(opts.model, max_num_seqs=batch, prefix_cache=False) as engine:
            for i in range(opts.warmup + opts.repeat):
                row = {}
                for c in opts.concurrency:
                    sides = [("served", http), ("engine", engine)]
                    for name, target in (sides if (i + c) % 2 == 0 else reversed(sides)):
                        row[f"{name}_{c}"] = await one_round(target, c, opts.tokens, opts.prompt_words, seed=i)
                if i >= opts.warmup:
                    rounds.append(row)
                if progress is not None:
                    progress.update(1)
    finally:
        server.stop()
    return {"model": opts.model, "options": opts.__dict__, "rounds": rounds,
            "summary": summarize_served(rounds, opts.concurrency)}


def summarize_served(rounds: list[dict], concurrency: tuple[int, ...]) -> dict:
    def s(values):
        return summarize(values).as_dict()

    out = {}
    for c in concurrency:
        served, engine = [r[f"served_{c}"] for r in rounds], [r[f"engine_{c}"] for r in rounds]
        out[c] = {
            "served": s([x["aggregate"] for x in served]), "engine": s([x["aggregate"] for x in engine]),
            "ratio": s([a["aggregate"] / b["aggregate"] for a, b in zip(served, engine)]),
            "served_ttft_ms": s([x["ttft_ms"] for x in served]),
            "engine_ttft_ms": s([x["ttft_ms"] for x in engine]),
        }
    return out


def format_served(result: dict) -> list[str]:
    def f(d, digits=1):
        return f"{d['median']:.{digits}f} [{d['low']:.{digits}f}, {d['high']:.{digits}f}]"

    lines = ["| concurrency | served tok/s | engine in-process tok/s | served/engine | served median TTFT ms | "
             "engine median TTFT ms |", "|---|---|---|---|---|---|"]
    for c, s in result["summary"].items():
        lines.append(f"| {c} | {f(s['served'])} | {f(s['engine'])} | {f(s['ratio'], 2)} | "
                     f"{f(s['served_ttft_ms'])} | {f(s['engine_ttft_ms'])} |")
    return lines
