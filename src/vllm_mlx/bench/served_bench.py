"""`vllm-mlx bench served MODEL`: what HTTP costs -- the same workload through `vllm-mlx serve` and
through the engine in this process, at several concurrencies.

Each round runs, for every concurrency C, C streaming chat completions against a `vllm-mlx serve`
process started for MODEL (same batch bound, prefix cache and speculation off on both sides) and the same C
requests submitted to an in-process engine; the order alternates between rounds and the ratios
are paired per round. Reported per side: aggregate completion tok/s (all tokens / wall time from
the first request sent to the last token), and the median time to first token (text, over HTTP).
On Linux the served rounds also report CPU time per completion token: the server's (its process and
an engine process under it, from ``/proc``) and this process's, which is the HTTP client's then. On a
machine with few cores the two compete with the engine, and that bounds served/engine.
"""

from __future__ import annotations

import asyncio
import math
import os
import statistics
import tempfile
import time
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


async def one_round(target, c: int, tokens: int, words: int, seed: int, server_pid: int | None = None) -> dict:
    prompts = make_prompts(c, words, seed)
    server_cpu, client_cpu = process_tree_cpu_s(server_pid), time.process_time()
    records: list[StreamRecord] = await asyncio.gather(
        *(target.chat([{"role": "user", "content": p}], tokens) for p in prompts))
    failed = [r.error for r in records if r.error]
    if failed:
        raise RuntimeError(f"{target.name}: request failed: {failed[0]}")
    span = max(r.end for r in records) - min(r.start for r in records)
    ttfts = [r.ttft for r in records if math.isfinite(r.ttft)]
    completion = sum(r.completion_tokens for r in records)
    out = {"aggregate": completion / span, "ttft_ms": 1e3 * statistics.median(ttfts) if ttfts else float("nan")}
    server_after = process_tree_cpu_s(server_pid)
    if server_cpu is not None and server_after is not None and completion:
        out["server_cpu_us_per_token"] = 1e6 * (server_after - server_cpu) / completion
        out["client_cpu_us_per_token"] = 1e6 * (time.process_time() - client_cpu) / completion
    return out


def process_tree_cpu_s(pid: int | None) -> float | None:
    """CPU seconds (user + system) of process ``pid`` and its children, from /proc (None elsewhere)."""
    if pid is None or not os.path.exists(f"/proc/{pid}/stat"):
        return None
    total = 0.0
    for p in [pid, *_children(pid)]:
        try:
            total += stat_cpu_s(f"/proc/{p}/stat")
        except (OSError, IndexError, ValueError):  # a child that just ended
            continue
    return total


def stat_cpu_s(stat_path: str) -> float:
    """CPU seconds (user + system) in a process's or thread's /proc ``stat`` file (OSError once it ended)."""
    with open(stat_path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def _children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (children started by any of its threads, and theirs)."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids = [int(x) for x in f.read().split()]
        except OSError:
            continue
        for kid in kids:
            found += [kid, *_children(kid)]
    return found


async def run_served_bench(opts: ServedBenchOptions, progress=None) -> dict:
    from .servers import vllm_mlx_server

    batch = max(opts.concurrency)
    log = Path(tempfile.mkdtemp(prefix="vllm-mlx-bench-")) / "server.log"
    server = vllm_mlx_server(opts.model, log, "--max-num-seqs", str(batch), "--no-prefix-cache",
                             "--speculative", "off", "--log-level", "warning", *opts.server_args)
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
                        pid = server.proc.pid if name == "served" else None
                        row[f"{name}_{c}"] = await one_round(target, c, opts.tokens, opts.prompt_words, seed=i,
                                                             server_pid=pid)
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
        if all("server_cpu_us_per_token" in x for x in served):
            out[c]["server_cpu_us_per_token"] = s([x["server_cpu_us_per_token"] for x in served])
            out[c]["client_cpu_us_per_token"] = s([x["client_cpu_us_per_token"] for x in served])
    return out


def format_served(result: dict) -> list[str]:
    def f(d, digits=1):
        return f"{d['median']:.{digits}f} [{d['low']:.{digits}f}, {d['high']:.{digits}f}]"

    lines = ["| concurrency | served tok/s | engine in-process tok/s | served/engine | served median TTFT ms | "
             "engine median TTFT ms | server CPU µs/token | client CPU µs/token |", "|---|---|---|---|---|---|---|---|"]
    for c, s in result["summary"].items():
        cpu = (f"{f(s['server_cpu_us_per_token'], 0)} | {f(s['client_cpu_us_per_token'], 0)}"
               if "server_cpu_us_per_token" in s else "— | —")
        lines.append(f"| {c} | {f(s['served'])} | {f(s['engine'])} | {f(s['ratio'], 2)} | "
                     f"{f(s['served_ttft_ms'])} | {f(s['engine_ttft_ms'])} | {cpu} |")
    return lines
