"""Commands of the earlier vllm-mlx 0.2.x that are not commands here: mapped to ours, or refused in one line.

* ``vllm-mlx-bench --model M [--prompts N] [--max-tokens N] [--quick]`` -> ``vllm-mlx bench M --ceiling``
  (our engine benchmark, with the bare mlx-lm loop beside it);
* ``vllm-mlx-chat`` (a separate web chat UI) -> refused: the chat page is served by `vllm-mlx serve` at ``/``;
* ``vllm-mlx bench-detok`` and ``vllm-mlx bench-kv-cache`` -> refused, naming the benchmark that measures it;

A refusal exits 2 with one line on stderr (docs/migrating.md lists every name).
"""

from __future__ import annotations

import argparse
import sys
from types import MappingProxyType

SEED_BENCH_COMMANDS = MappingProxyType({
    "bench-detok": "the streaming detokenizer is part of every benchmark: `vllm-mlx bench MODEL` (tokens/s end to "
                   "end, detokenizing included)",
    "bench-kv-cache": "prefix-cache reuse is measured against a running server: `vllm-mlx bench serve --url URL` "
                      "(and /v1/cache/stats shows hits)",
})


def refuse(prog: str, message: str) -> int:
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 2


def seed_bench_command(name: str) -> int:
    return refuse("vllm-mlx", f"`vllm-mlx {name}` is a command of vllm-mlx 0.2.x; here: {SEED_BENCH_COMMANDS[name]}")


class _OneLine(argparse.ArgumentParser):
    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see docs/migrating.md)\n")


def bench_main(argv: list[str] | None = None) -> int:
    """``vllm-mlx-bench``: the earlier raw benchmark's flags, run as ``vllm-mlx bench MODEL --ceiling``."""
    argv = sys.argv[1:] if argv is None else argv
    p = _OneLine(prog="vllm-mlx-bench", description="the command of vllm-mlx 0.2.x, run as `vllm-mlx bench "
                 "MODEL --ceiling` (the engine here, and a bare mlx-lm loop beside it)")
    p.add_argument("--model", required=True)
    p.add_argument("--prompts", type=int, default=None, help="number of prompts (--num-prompts)")
    p.add_argument("--max-tokens", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="one measured run (--repeat 1 --warmup 0)")
    p.add_argument("--video", action="store_true", help=argparse.SUPPRESS)  # refused below
    p.add_argument("--video-url", default=None, help=argparse.SUPPRESS)
    p.add_argument("--video-path", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.video or args.video_url or args.video_path:
        return refuse("vllm-mlx-bench", "video benchmarks are not available here; serve the model and send "
                      "video requests, or run `vllm-mlx bench MODEL` for text")
    ours = [args.model, "--ceiling"]
    if args.prompts is not None:
        ours += ["--num-prompts", str(args.prompts)]
    if args.max_tokens is not None:
        ours += ["--max-tokens", str(args.max_tokens)]
    if args.quick:
        ours += ["--repeat", "1", "--warmup", "0"]
    print(f"vllm-mlx-bench: running `vllm-mlx bench {' '.join(ours)}`", flush=True)
    from .bench.cli import main

    return main(ours)


def chat_main(argv: list[str] | None = None) -> int:
    """``vllm-mlx-chat``: the separate chat UI is gone; the server's own page is the chat."""
    argv = sys.argv[1:] if argv is None else argv
    url = "http://127.0.0.1:8000"
    for i, arg in enumerate(argv):
        if arg.startswith("--server-url="):
            url = arg.partition("=")[2]
        elif arg == "--server-url" and i + 1 < len(argv):
            url = argv[i + 1]
    return refuse("vllm-mlx-chat", f"the chat UI is served by the server itself here: open {url.rstrip('/')}/ in "
                  f"a browser (start one with `vllm-mlx serve MODEL`)")
