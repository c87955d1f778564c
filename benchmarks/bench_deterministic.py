"""Throughput cost of --deterministic: the default server and a --deterministic server, same model, same run.

    .venv/bin/python benchmarks/bench_deterministic.py [--model DIR] [--tokens 128] [--repeats 5]

Both servers run side by side; for each repeat and concurrency the two are
measured back to back (alternating which goes first), so both see the same
machine conditions. Reports aggregate completion tokens/s (median, min-max) and
the median of the per-repeat ratios deterministic/default.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from bench_engine import fmt, server_runs


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default=None, help="model folder (default: the demo model)")
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    args = p.parse_args()
    if args.model is None:
        from vllm_mlx.models.demo import ensure_demo_model

        args.model = str(ensure_demo_model())
    from vllm_mlx.bench.servers import vllm_mlx_server

    modes = {"default": ["--speculative", "off"], "deterministic": ["--deterministic"]}
    results = {m: {c: [] for c in args.concurrency} for m in modes}
    with tempfile.TemporaryDirectory() as tmp:
        servers = {
            m: vllm_mlx_server(args.model, Path(tmp) / m, "--max-num-seqs", str(max(args.concurrency)), *flags)
            for m, flags in modes.items()
        }
        try:
            for server in servers.values():
                server.wait_ready()
            for c in args.concurrency:
                for server in servers.values():
                    server_runs(server.url, c, args.tokens, 0)  # warm-up
            for rep in range(args.repeats):
                for c in args.concurrency:
                    order = list(modes) if rep % 2 == 0 else list(reversed(modes))
                    for m in order:
                        results[m][c].append(server_runs(servers[m].url, c, args.tokens, 1, warm=False)[0][0])
        finally:
            for server in servers.values():
                server.stop()
    print(f"model: {args.model}; {args.tokens} tokens per stream; median (min-max) of {args.repeats} runs")
    print("| concurrency | default tok/s | --deterministic tok/s | deterministic/default |")
    print("|---|---|---|---|")
    for c in args.concurrency:
        ratios = [d / b for d, b in zip(results["deterministic"][c], results["default"][c])]
        print(f"| {c} | {fmt(results['default'][c])} | {fmt(results['deterministic'][c])} | "
              f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}) |")


if __name__ == "__main__":
    main()
