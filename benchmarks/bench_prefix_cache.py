"""Prefix cache benchmark: a 6-turn conversation over a ~4k-token shared prefix, and stream smoothness
while a 4k-token prompt is admitted.

    .venv/bin/python benchmarks/bench_prefix_cache.py [--repeats 3] [--prefix-tokens 4000]

Part 1 — TTFT per turn, each server in the same run, interleaved per repeat:
  * vllm-mlx with its prefix cache (default), * vllm-mlx with --no-prefix-cache,
  * mlx_lm.server (same mlx-lm version, same model folder) with its own prompt cache.
  Each repeat starts a fresh conversation (a unique first line), so repeats never hit each other;
  every turn resends the whole history including the server's own previous answers.
  mlx_lm.server runs with OpenBLAS preloaded (LD_PRELOAD) so both use the same BLAS.
Part 2 — inter-token latency of 4 running streams while a ~4k-token prompt arrives, with
  --max-num-batched-tokens 256 (chunked prefill) vs 8192 (the whole prompt in one step).
Model: a Qwen3-architecture random model (hidden 256, 4 layers, vocab 4096, context 16k) built
locally; float32.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx


WORDS = ("the model reads every rule below before it answers and keeps each answer short clear and kind "
         "while tools are described with names arguments and types so that calls can be checked").split()


def build_model(path: Path) -> Path:
    import vllm_mlx  # noqa: F401
    from vllm_mlx_testing import build_tiny_model

    if not (path / "config.json").exists():
        build_tiny_model(path, "qwen3", hidden_size=256, num_hidden_layers=4, num_attention_heads=8,
                         num_key_value_heads=4, intermediate_size=512, vocab_size=4096, init_scale=8.0)
        config = json.loads((path / "config.json").read_text())
        config["max_position_embeddings"] = 16384
        (path / "config.json").write_text(json.dumps(config, indent=2))
    return path


def system_prompt(tokens: int, nonce: str) -> str:
    # about 1.3 words per token with the local tokenizer; trimmed by the caller's measurement
    words = [WORDS[i % len(WORDS)] for i in range(int(tokens * 0.8))]
    return f"Conversation {nonce}.\n" + " ".join(words)


async def stream_chat(client: httpx.AsyncClient, url: str, messages: list, max_tokens: int,
                      gaps: list | None = None, model: str = "default_model") -> tuple[float, str, dict]:
    # "default_model" makes mlx_lm.server use the model it was started with; vllm-mlx serves any name
    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    ttft, last, text, usage = None, None, [], {}
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as resp:
        async for line in resp.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            now = time.perf_counter()
            if chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                ttft = ttft or now - start
                if gaps is not None and last is not None:
                    gaps.append((last, now - last))
                last = now
                text.append(chunk["choices"][0]["delta"]["content"])
            if chunk.get("usage"):
                usage = chunk["usage"]
    return ttft, "".join(text), usage


def conversation_ttfts(args, servers: dict[str, str]) -> dict[str, list[list[float]]]:
    results = {name: [] for name in servers}

    async def one(url: str, nonce: str) -> tuple[list[float], list[int]]:
        messages = [{"role": "system", "content": system_prompt(args.prefix_tokens, nonce)}]
        ttfts, cached = [], []
        async with httpx.AsyncClient(timeout=600) as client:
            for turn in range(args.turns):
                messages.append({"role": "user", "content": f"Question {turn + 1}: what should I do next?"})
                ttft, text, usage = await stream_chat(client, url, messages, args.max_tokens)
                messages.append({"role": "assistant", "content": text})
                ttfts.append(ttft)
                cached.append((usage.get("prompt_tokens_details") or {}).get("cached_tokens", -1))
                if turn == 0 and nonce.endswith("-0"):
                    print(f"  prompt tokens at turn 1: {usage.get('prompt_tokens')}", file=sys.stderr)
        return ttfts, cached

    for rep in range(args.repeats + 1):  # the first round is a warm-up
        names = list(servers) if rep % 2 == 0 else list(reversed(servers))
        for name in names:
            ttfts, cached = asyncio.run(one(servers[name], f"{name}-{rep}"))
            if rep:
                results[name].append(ttfts)
                print(f"  {name} repeat {rep}: ttft ms {[round(t * 1000) for t in ttfts]} cached {cached}",
                      file=sys.stderr)
    return results


def admission_gaps(url: str, prefix_tokens: int) -> tuple[float, float, float]:
    """(max gap ms, p99 gap ms, TTFT of the big prompt ms) for 4 streams while a big prompt arrives."""

    async def run() -> tuple[float, float, float]:
        gaps: list = []
        async with httpx.AsyncClient(timeout=600) as client:
            streams = [asyncio.ensure_future(stream_chat(
                client, url, [{"role": "user", "content": f"Stream {i}, talk for a while."}], 400, gaps))
                for i in range(4)]
            await asyncio.sleep(1.0)
            t0 = time.perf_counter()
            big = [{"role": "user", "content": system_prompt(prefix_tokens, f"big-{time.time()}")}]
            ttft, _, _ = await stream_chat(client, url, big, 1)
            t1 = t0 + ttft
            await asyncio.gather(*streams)
        window = [g for start, g in gaps if t0 <= start + g and start <= t1]
        window.sort()
        p99 = window[min(len(window) - 1, int(len(window) * 0.99))] if window else 0.0
        return (max(window) if window else 0.0) * 1000, p99 * 1000, ttft * 1000

    return asyncio.run(run())


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--turns", type=int, default=6)
    p.add_argument("--prefix-tokens", type=int, default=4000)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--model", default=None)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-prefix-"))
    model = Path(args.model) if args.model else build_model(Path(tempfile.gettempdir()) / "vllm-mlx-bench-16k")
    from vllm_mlx.bench.servers import mlx_lm_server, vllm_mlx_server

    servers = {
        "vllm-mlx cache on": vllm_mlx_server(str(model), work / "cache_on.log", "--max-num-batched-tokens", "512"),
        "vllm-mlx cache off": vllm_mlx_server(str(model), work / "cache_off.log", "--no-prefix-cache",
                                              "--max-num-batched-tokens", "512"),
        "mlx_lm.server": mlx_lm_server(str(model), work / "mlx_lm.log"),
    }
    try:
        for server in servers.values():
            server.wait_ready()
        results = conversation_ttfts(args, {name: server.url for name, server in servers.items()})
    finally:
        for server in servers.values():
            server.stop()
    print(f"\nTTFT per turn, ms: median (min-max) of {args.repeats} conversations; ~{args.prefix_tokens}-token "
          f"shared prefix, {args.max_tokens} tokens per answer")
    print("| turn | " + " | ".join(results) + " |")
    print("|---|" + "---|" * len(results))
    for turn in range(args.turns):
        cells = []
        for name in results:
            vals = [conv[turn] * 1000 for conv in results[name]]
            cells.append(f"{statistics.median(vals):.0f} ({min(vals):.0f}-{max(vals):.0f})")
        print(f"| {turn + 1} | " + " | ".join(cells) + " |")

    print("\nRunning streams while a ~4k-token prompt is admitted (median of repeats):")
    print("| --max-num-batched-tokens | max inter-token gap ms | p99 gap ms | TTFT of the 4k prompt ms |")
    print("|---|---|---|---|")
    for budget in (256, 8192):
        server = vllm_mlx_server(str(model), work / f"itl-{budget}.log", "--max-num-batched-tokens", str(budget),
                                 "--no-prefix-cache")
        try:
            server.wait_ready()
            admission_gaps(server.url, args.prefix_tokens)  # warm-up
            runs = [admission_gaps(server.url, args.prefix_tokens) for _ in range(args.repeats)]
        finally:
            server.stop()
        cols = [statistics.median(r[i] for r in runs) for i in range(3)]
        print(f"| {budget} | {cols[0]:.0f} | {cols[1]:.0f} | {cols[2]:.0f} |")


if __name__ == "__main__":
    main()
