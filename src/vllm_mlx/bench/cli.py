"""Argument parsing and output for `vllm-mlx bench ...` (wired from the main CLI)."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
from pathlib import Path

MODES = ("serve", "divergence", "agent", "rows", "served")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", default=None, metavar="PATH", help="write the full results as JSON here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _targets(p: argparse.ArgumentParser, model_optional: bool = True) -> None:
    p.add_argument("model", nargs="?" if model_optional else None, default=None,
                   help="a model folder or repo id, run by the engine in this process (or give --url)")
    p.add_argument("--url", default=None, help="an OpenAI-compatible server instead of MODEL")
    p.add_argument("--model-name", default="default_model", help="the model field sent to --url servers")
    p.add_argument("--api-key", default=None)


def engine_parser() -> argparse.ArgumentParser:
    from .presets import PRESETS

    p = argparse.ArgumentParser(prog="vllm-mlx bench", description=(
        "In-process engine benchmark (modes: vllm-mlx bench {rows,served,serve,divergence,agent} --help)."))
    p.add_argument("model", help="a model folder or repo id")
    p.add_argument("--preset", default="batch10", choices=sorted(PRESETS),
                   help="workload: " + "; ".join(f"{k}: {v.description}" for k, v in PRESETS.items()))
    p.add_argument("--num-prompts", type=int, default=None, help="override the preset's prompt count")
    p.add_argument("--max-tokens", type=int, default=None, help="override the preset's tokens per prompt")
    p.add_argument("--repeat", type=int, default=3, help="measured runs (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=1, help="unmeasured runs first (default: %(default)s)")
    p.add_argument("--ceiling", action="store_true",
                   help="also run a bare mlx-lm batched forward loop and mlx_lm.stream_generate, interleaved")
    _common(p)
    return p


def serve_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vllm-mlx bench serve", description="Concurrency sweep against a server.")
    p.add_argument("--url", required=True, help="base URL of an OpenAI-compatible server")
    p.add_argument("--compare", default=None, metavar="URL2", help="a second server, interleaved in the same run")
    p.add_argument("--name", action="append", default=None, help="labels of the servers (repeat for --compare)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 10])
    p.add_argument("--requests-per-client", type=int, default=2, help="requests per client per round")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--prompt-words", type=int, default=24)
    p.add_argument("--repeat", type=int, default=3, help="measured rounds per concurrency (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--model-name", default="default_model", help="the model field of requests")
    p.add_argument("--api-key", default=None)
    p.add_argument("--no-ignore-eos", dest="ignore_eos", action="store_false",
                   help="do not send ignore_eos (the default asks for exactly --max-tokens tokens)")
    p.add_argument("--out", default="bench-results", help="folder for results.json and PNG plots")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    return p


def divergence_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vllm-mlx bench divergence",
                                description="Serial vs concurrent greedy agreement.")
    _targets(p)
    p.add_argument("--num-prompts", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=32)
    _common(p)
    return p


def agent_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vllm-mlx bench agent", description="Multi-turn growing prefix: TTFT per turn.")
    _targets(p)
    p.add_argument("--compare", default=None, metavar="URL2", help="a second server, interleaved")
    p.add_argument("--name", action="append", default=None)
    p.add_argument("--turns", type=int, default=6)
    p.add_argument("--conversations", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1, help="unmeasured conversations first")
    p.add_argument("--system-words", type=int, default=1500)
    p.add_argument("--max-tokens", type=int, default=32)
    _common(p)
    return p


def rows_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vllm-mlx bench rows",
                                description="the engine in-process against the bare mlx-lm loop at several "
                                            "batch sizes (and mlx_lm.stream_generate at one row)")
    p.add_argument("model", help="a model folder or repo id, or `demo` (the built-in demo model)")
    p.add_argument("--rows", type=int, nargs="+", default=[1, 16, 64], help="batch sizes (default: 1 16 64)")
    p.add_argument("--tokens", type=int, default=128, help="tokens per row (default: %(default)s)")
    p.add_argument("--prompt-len", type=int, default=24, help="prompt tokens per row (default: %(default)s)")
    p.add_argument("--repeat", type=int, default=5, help="measured rounds (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=1, help="unmeasured rounds first (default: %(default)s)")
    p.add_argument("--profile", action="store_true", help="also time the phases of the engine's steps")
    p.add_argument("--speculative", choices=("off", "ngram", "draft", "mtp"), default="off",
                   help="also run an engine with this speculation, against the plain one (default: off)")
    p.add_argument("--draft-model", metavar="MODEL", help="with --speculative draft: the draft model")
    p.add_argument("--lora", nargs="+", metavar="NAME=PATH", default=(),
                   help="also run an engine serving these LoRA adapters, its rows spread over them, against the "
                        "plain engine")
    p.add_argument("--temperature", type=float, default=0.0,
                   help="sample at this temperature: the engine's sampler against mlx-lm's (default: greedy)")
    _common(p)
    return p


def served_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vllm-mlx bench served",
                                description="what HTTP costs: `vllm-mlx serve MODEL` against the engine in this "
                                            "process, same workload, at several concurrencies")
    p.add_argument("model", help="a model folder or repo id, or `demo` (the built-in demo model)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 10, 32, 64])
    p.add_argument("--max-tokens", type=int, default=64, help="tokens per request (default: %(default)s)")
    p.add_argument("--prompt-words", type=int, default=24)
    p.add_argument("--repeat", type=int, default=3, help="measured rounds (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=1, help="unmeasured rounds first (default: %(default)s)")
    p.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                   help="a further `vllm-mlx serve` argument (repeat; e.g. --server-arg=--engine-process)")
    _common(p)
    return p


def bench_model(name: str) -> str:
    """A model argument of `bench rows` / `bench served`: ``demo`` is the built-in demo model."""
    if name in ("demo", "vllm-mlx-demo"):
        from ..models.demo import ensure_demo_model

        return str(ensure_demo_model())
    return name


def run_async(coro):
    """Run a benchmark's coroutine on uvloop where it is installed (it is with uvicorn[standard], and the
    server runs on it): a streamed token costs the client's event loop less CPU than asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def _progress(total: int, disabled: bool, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=disabled, file=sys.stderr, leave=False)


def _clean(obj):
    """NaN/inf become null, so the file is strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def write_json(path: str | Path, result: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_clean(result), indent=2) + "\n")
    return path


def _positive(parser: argparse.ArgumentParser, args: argparse.Namespace, *names: str) -> None:
    for name in names:
        value = getattr(args, name)
        values = value if isinstance(value, list) else [value]
        if any(v is not None and v < 1 for v in values):
            parser.error(f"--{name.replace('_', '-')} must be at least 1")


def main(argv: list[str]) -> int:
    mode = argv[0] if argv and argv[0] in MODES else "engine"
    rest = argv[1:] if mode != "engine" else argv
    from ..models.loader import ModelNotFoundError

    try:
        return {"engine": run_engine, "serve": run_serve, "divergence": run_divergence, "agent": run_agent,
                "rows": run_rows, "served": run_served}[mode](rest)
    except ModelNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def run_engine(argv: list[str]) -> int:
    from dataclasses import replace

    from .engine_bench import COLUMNS, LABELS, EngineBenchOptions, run_engine_bench
    from .presets import PRESETS

    parser = engine_parser()
    args = parser.parse_args(argv)
    _positive(parser, args, "repeat", "num_prompts", "max_tokens")
    if args.warmup < 0:
        parser.error("--warmup must be at least 0")
    preset = PRESETS[args.preset]
    if args.num_prompts:
        preset = replace(preset, num_prompts=args.num_prompts)
    if args.max_tokens:
        preset = replace(preset, max_tokens=args.max_tokens)
    opts = EngineBenchOptions(args.model, preset, args.repeat, args.warmup, args.ceiling)
    from ..models.loader import resolve_model_path

    resolve_model_path(args.model)  # a missing model fails now, in one line, before the progress bar
    with _progress(args.warmup + args.repeat, args.no_progress, "engine runs") as bar:
        result = run_async(run_engine_bench(opts, bar))
    print(f"preset {preset.name}: {preset.num_prompts} prompts x {preset.max_tokens} tokens, max_num_seqs "
          f"{preset.decode_rows} (completion batch {preset.completion_batch}); median [95% CI] of {args.repeat} "
          f"runs after {args.warmup} warm-up")
    print("| " + " | ".join(LABELS[c] for c in COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    print("| " + " | ".join(_fmt(result["summary"][c], 3 if c == "total_s" else 1) for c in COLUMNS) + " |")
    if "ceiling_summary" in result:
        s = result["ceiling_summary"]
        print("\nagainst the ceiling (paired per run): median [95% CI]")
        print("| measure | engine tok/s | ceiling tok/s | engine/ceiling |")
        print("|---|---|---|---|")
        print(f"| decode, batch {s['batch']} vs bare mlx-lm loop | {_fmt(s['engine_decode'])} | "
              f"{_fmt(s['bare_decode'])} | {_fmt(s['decode_ratio'], 2)} |")
        print(f"| incl. prefill, batch {s['batch']} vs bare loop | {_fmt(s['engine_completion'])} | "
              f"{_fmt(s['bare_total'])} | {_fmt(s['total_ratio'], 2)} |")
        print(f"| single-stream decode vs mlx_lm.stream_generate | {_fmt(s['engine_single'])} | "
              f"{_fmt(s['mlx_generate_single'])} | {_fmt(s['single_ratio'], 2)} |")
    if args.json:
        write_json(args.json, result)
    return 0


def _parse_rounds(parser: argparse.ArgumentParser, argv: list[str], *positive: str) -> argparse.Namespace:
    """The arguments of a mode measured in rounds: ``positive`` at least 1, --warmup at least 0."""
    args = parser.parse_args(argv)
    _positive(parser, args, *positive, "repeat")
    if args.warmup < 0:
        parser.error("--warmup must be at least 0")
    return args


def _run_rounds(args: argparse.Namespace, run, header: str, lines) -> int:
    """Run ``run(progress)`` over the rounds, print the header and the result's lines, write the JSON."""
    with _progress(args.warmup + args.repeat, args.no_progress, "rounds") as bar:
        result = run_async(run(bar))
    print(f"{header}; median [95% CI] of {args.repeat} interleaved rounds after {args.warmup} warm-up, "
          "ratios paired per round")
    print("\n".join(lines(result)))
    if args.json:
        write_json(args.json, result)
    return 0


def run_rows(argv: list[str]) -> int:
    from .rows_bench import RowsBenchOptions, format_rows, run_rows_bench

    parser = rows_parser()
    args = _parse_rounds(parser, argv, "rows", "tokens", "prompt_len")
    if args.tokens < 3:
        parser.error("--tokens must be at least 3 (decode rates need tokens after the first)")
    if not 0 <= args.temperature <= 2:
        parser.error("--temperature must be in [0, 2]")
    if (args.speculative == "draft") != bool(args.draft_model):
        parser.error("--speculative draft and --draft-model MODEL go together")
    from ..engine.lora_files import parse_lora_specs

    try:
        loras = parse_lora_specs(args.lora) if args.lora else ()
    except ValueError as exc:
        parser.error(f"--lora: {exc}")
    opts = RowsBenchOptions(bench_model(args.model), tuple(args.rows), args.tokens, args.prompt_len, args.repeat,
                            args.warmup, args.profile, args.temperature, args.speculative,
                            bench_model(args.draft_model) if args.draft_model else None, loras)
    sampling = f"temperature {args.temperature:g}" if args.temperature else "greedy"
    return _run_rounds(args, lambda bar: run_rows_bench(opts, bar),
                       f"{args.tokens} tokens per row, {args.prompt_len}-token prompts, {sampling}", format_rows)


def run_served(argv: list[str]) -> int:
    from .served_bench import ServedBenchOptions, format_served, run_served_bench

    args = _parse_rounds(served_parser(), argv, "concurrency", "max_tokens", "prompt_words")
    opts = ServedBenchOptions(bench_model(args.model), tuple(args.concurrency), args.max_tokens, args.prompt_words,
                              args.repeat, args.warmup, args.server_arg)
    return _run_rounds(args, lambda bar: run_served_bench(opts, bar), f"{args.max_tokens} tokens per request",
                       format_served)


def _fmt(s: dict, digits: int = 1) -> str:
    return f"{s['median']:.{digits}f} [{s['low']:.{digits}f}, {s['high']:.{digits}f}]"


def run_serve(argv: list[str]) -> int:
    from .serve_bench import ServeBenchOptions, format_tables, run_serve_bench

    parser = serve_parser()
    args = parser.parse_args(argv)
    _positive(parser, args, "concurrency", "requests_per_client", "max_tokens", "repeat", "prompt_words")
    urls = [args.url] + ([args.compare] if args.compare else [])
    names = args.name or []
    if names and len(names) != len(urls):
        parser.error("give one --name per server")
    opts = ServeBenchOptions(urls=urls, names=names, concurrency=args.concurrency,
                             requests_per_client=args.requests_per_client, max_tokens=args.max_tokens,
                             prompt_words=args.prompt_words, repeat=args.repeat, warmup=args.warmup,
                             model=args.model_name, api_key=args.api_key, ignore_eos=args.ignore_eos)
    total = (args.warmup + args.repeat) * len(args.concurrency) * len(urls)
    with _progress(total, args.no_progress, "rounds") as bar:
        result = run_async(run_serve_bench(opts, bar))
    print(format_tables(result))
    out = Path(args.out)
    path = write_json(out / "results.json", result)
    files = [path]
    if not args.no_plots:
        from .plots import PlotsUnavailable, write_plots

        try:
            files += write_plots(result, out)
        except PlotsUnavailable as exc:  # the JSON is written either way
            print(f"\nno plots: {exc}", file=sys.stderr)
    print("\nwrote " + ", ".join(str(f) for f in files))
    failed = sum(e["failed"] for s in result["servers"].values() for e in s["concurrency"].values())
    return 1 if failed else 0


async def _with_targets(args, body):
    """Open the targets the arguments name (MODEL in-process, or --url [--compare]), run ``body(targets)``."""
    from .targets import EngineTarget, HttpTarget

    if args.url:
        targets = [HttpTarget(u, args.model_name, args.api_key) for u in [args.url, getattr(args, "compare", None)] if u]
    else:
        targets = [EngineTarget(args.model)]
    for t in targets:
        await t.__aenter__()
    try:
        return await body(targets)
    finally:
        for t in targets:
            await t.__aexit__(None, None, None)


def _check_target(parser, args) -> None:
    if bool(args.model) == bool(args.url):
        parser.error("give either MODEL (in-process engine) or --url")
    if getattr(args, "compare", None) and not args.url:
        parser.error("--compare needs --url")


def run_divergence(argv: list[str]) -> int:
    from .divergence import format_divergence, run_divergence as run

    parser = divergence_parser()
    args = parser.parse_args(argv)
    _check_target(parser, args)
    _positive(parser, args, "num_prompts", "max_tokens")
    with _progress(3 * args.num_prompts, args.no_progress, "requests") as bar:
        result = run_async(_with_targets(args, lambda ts: run(ts[0], args.num_prompts, args.max_tokens,
                                                                    progress=bar)))
    print(format_divergence(result))
    if args.json:
        write_json(args.json, result)
    return 0


def run_agent(argv: list[str]) -> int:
    from .agent import format_agent, run_agent as run

    parser = agent_parser()
    args = parser.parse_args(argv)
    _check_target(parser, args)
    _positive(parser, args, "turns", "conversations", "system_words", "max_tokens")
    count = 2 if args.compare else 1
    names = args.name or ([args.url, args.compare] if args.compare else [args.url or f"engine:{args.model}"])
    if len(names) != count:
        parser.error("give one --name per server")
    total = (args.warmup + args.conversations) * count
    with _progress(total, args.no_progress, "conversations") as bar:
        result = run_async(_with_targets(args, lambda ts: run(
            ts, names, args.turns, args.conversations, args.system_words, args.max_tokens, args.warmup, bar)))
    print(format_agent(result))
    if args.json:
        write_json(args.json, result)
    return 0
