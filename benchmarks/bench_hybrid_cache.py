"""Prefix-cache reuse on today's hybrid / sliding-window architectures: vllm-mlx vs mlx_lm.server.

For every architecture of ``vllm_mlx_testing.arch_models`` (plus a plain-KV Qwen3 for reference)
this builds the tiny model, starts `vllm-mlx serve` and `mlx_lm.server` on it side by side, runs
the three conversations of ``vllm_mlx.bench.cache_conversations`` on each (each scenario with its
own system prompt, so scenarios never hit each other's entries) and prints the measured request's
cached / prompt tokens as each server reports them. With ``--ttft`` it also measures the time to
first token of a new session that shares a ~4k-token system prompt, cold (cache cleared) and warm,
on the tiny and a mid-size Qwen3.5-shaped model.

    .venv/bin/python benchmarks/bench_hybrid_cache.py [--archs qwen3_5 gemma3_text ...] [--ttft]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import openai

from vllm_mlx.bench.cache_conversations import SCENARIOS, measure, system_prompt
from vllm_mlx.bench.servers import mlx_lm_server, vllm_mlx_server
from vllm_mlx_testing import build_tiny_model
from vllm_mlx_testing.arch_models import ARCHITECTURES, build_arch_model


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=600)


def _build(arch: str, root: Path, overrides: dict | None = None) -> Path:
    if arch == "qwen3 (plain KV)":
        return build_tiny_model(root / "qwen3", "qwen3")
    layers = 8 if overrides else None
    return build_arch_model(root / arch, arch, num_hidden_layers=layers, overrides=overrides)


def reuse_table(archs: list[str], root: Path) -> list[str]:
    rows = ["| model | conversation | vllm-mlx cached / prompt | mlx_lm.server cached / prompt |", "|---|---|---|---|"]
    for arch in archs:
        folder = _build(arch, root)
        ours = vllm_mlx_server(str(folder), root / f"vllm-mlx-{arch}.log").wait_ready()
        peer = mlx_lm_server(str(folder), root / f"mlx_lm-{arch}.log").wait_ready()
        try:
            for scenario in SCENARIOS:
                system = f"Project {scenario}. " + system_prompt(600)
                got = [measure(_client(s.url), "default_model", scenario, system, max_tokens=16) for s in (ours, peer)]
                rows.append(f"| {arch} | {scenario} | {got[0].cached_tokens} / {got[0].prompt_tokens} "
                            f"| {got[1].cached_tokens} / {got[1].prompt_tokens} |")
                print(rows[-1], flush=True)
        finally:
            ours.stop()
            peer.stop()
    return rows


def _ttft(client: openai.OpenAI, messages: list[dict]) -> float:
    start = time.perf_counter()
    stream = client.chat.completions.create(model="m", messages=messages, max_tokens=2, temperature=0.0, stream=True)
    for chunk in stream:
        if chunk.choices and (chunk.choices[0].delta.content or getattr(chunk.choices[0].delta, "reasoning_content",
                                                                         None)):
            ttft = time.perf_counter() - start
            for _ in stream:
                pass
            return ttft
    return time.perf_counter() - start


def ttft_table(root: Path, repeats: int) -> list[str]:
    rows = ["| model | cold TTFT (s) | warm TTFT (s) | warm / cold |", "|---|---|---|---|"]
    mid = {"hidden_size": 1024, "intermediate_size": 3072, "num_attention_heads": 8, "head_dim": 128,
           "linear_num_key_heads": 8, "linear_num_value_heads": 16, "linear_key_head_dim": 64,
           "linear_value_head_dim": 64}
    sizes = {"tiny qwen3_5": {}, "mid qwen3_5 (hidden 1024, 8 layers)": mid}
    for name, overrides in sizes.items():
        folder = _build("qwen3_5", root / name.split()[0], overrides)
        server = vllm_mlx_server(str(folder), root / f"ttft-{name.split()[0]}.log").wait_ready()
        client = _client(server.url)
        system = system_prompt(2200)  # ~4k tokens with the tiny tokenizer
        cold, warm = [], []
        try:
            for i in range(repeats + 1):  # the first round warms the process up
                httpx.post(f"{server.url}/v1/cache/clear")
                c = _ttft(client, [{"role": "system", "content": system}, {"role": "user", "content": f"Question {i}?"}])
                w = _ttft(client, [{"role": "system", "content": system}, {"role": "user", "content": f"Other {i}?"}])
                if i:
                    cold.append(c)
                    warm.append(w)
        finally:
            server.stop()
        c, w = statistics.median(cold), statistics.median(warm)
        rows.append(f"| {name} | {c:.3f} | {w:.3f} | {w / c:.3f} |")
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="*", default=[*ARCHITECTURES, "qwen3 (plain KV)"])
    parser.add_argument("--ttft", action="store_true", help="also measure cold vs warm TTFT with a 4k-token prefix")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        lines = reuse_table(args.archs, root) if args.archs else []
        if args.ttft:
            lines += [""] + ttft_table(root, args.repeats)
    print("\n".join(lines))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
