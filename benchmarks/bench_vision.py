"""Vision benchmark: image encode time, and what the vision-embedding cache and the prefix cache save.

    .venv/bin/python benchmarks/bench_vision.py [--repeats 3] [--image-size 448] [--arch qwen2_vl]

A small random Qwen-VL model is built locally (text: hidden 256, 4 layers; vision tower: width 256,
depth 4), served by vllm-mlx, and asked about 448x448 images (256 image tokens each). Per repeat,
with a fresh image each time, three requests (max_tokens 1, so the time is the time to first token):

  * cold      -- a new image: fetch/decode/preprocess + vision tower + prefill of the whole prompt
  * embed hit -- the same image after *different* leading text: the vision-embedding cache hits, but the
                 prefix cache cannot reuse keys/values past the text, so the prompt is prefilled again
  * full hit  -- the same request again: the prefix cache (keyed on the image hashes) reuses the prompt

It also reports the vision tower's time per image from /v1/cache/stats (``encode_seconds`` over
``encoded_items``), and the rate of 4 concurrent vision requests (new images, then the same requests
again so only decoding remains) vs 4 text requests, 64 tokens each.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def build(path: Path, arch: str, size: int) -> Path:
    from vllm_mlx_testing.vision_models import build_tiny_vision_model

    if not (path / "config.json").exists():
        build_tiny_vision_model(path, arch, hidden_size=256, num_hidden_layers=4, num_attention_heads=8,
                                num_key_value_heads=4, intermediate_size=512, vocab_size=4096,
                                vision_width=256, vision_depth=4, min_pixels=size * size, max_pixels=size * size)
    return path


async def ttft(client: httpx.AsyncClient, content: list, max_tokens: int = 1) -> tuple[float, dict]:
    start = time.perf_counter()
    r = await client.post("/v1/chat/completions", json={
        "model": "m", "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
        "temperature": 0, "ignore_eos": True})
    r.raise_for_status()
    return time.perf_counter() - start, r.json()["usage"]


async def run(base: str, repeats: int, size: int) -> None:
    from vllm_mlx_testing.vision_models import data_url, random_image

    rows: dict[str, list[float]] = {"cold": [], "embed hit": [], "full hit": []}
    async with httpx.AsyncClient(base_url=base, timeout=600) as client:
        warm = data_url(random_image(999, (size, size)))
        await ttft(client, [{"type": "image_url", "image_url": {"url": warm}}, {"type": "text", "text": "warm"}])
        prompt_tokens = 0
        for r in range(repeats):
            url = data_url(random_image(r, (size, size)))
            image = {"type": "image_url", "image_url": {"url": url}}
            t, usage = await ttft(client, [{"type": "text", "text": f"Run {r}. Look:"}, image,
                                           {"type": "text", "text": "What is it?"}])
            rows["cold"].append(t)
            prompt_tokens = usage["prompt_tokens"]
            t, _ = await ttft(client, [{"type": "text", "text": f"Another question {r}:"}, image,
                                       {"type": "text", "text": "What is it?"}])
            rows["embed hit"].append(t)
            t, usage = await ttft(client, [{"type": "text", "text": f"Another question {r}:"}, image,
                                           {"type": "text", "text": "What is it?"}])
            rows["full hit"].append(t)
            cached = usage.get("prompt_tokens_details", {}).get("cached_tokens")
        stats = (await client.get("/v1/cache/stats")).json()["vision_embeddings"]
        print(f"prompt: {prompt_tokens} tokens ({size}x{size} image); last full hit reused {cached} cached tokens")
        print(f"{'request':<12}{'median TTFT ms':>16}{'min':>10}{'max':>10}")
        for name, times in rows.items():
            print(f"{name:<12}{statistics.median(times) * 1e3:>16.1f}{min(times) * 1e3:>10.1f}{max(times) * 1e3:>10.1f}")
        print(f"vision tower: {stats['encode_seconds'] / stats['encoded_items'] * 1e3:.1f} ms per image "
              f"({stats['encoded_items']} encoded, {stats['hits']} cache hits)")
        for kind in ("vision", "vision (images cached)", "text"):
            jobs = []
            for k in range(4):
                content = ([{"type": "image_url", "image_url": {"url": data_url(random_image(500 + k, (size, size)))}},
                            {"type": "text", "text": "Describe."}] if kind != "text" else f"Story number {k}.")
                jobs.append(ttft(client, content, max_tokens=64))
            start = time.perf_counter()
            await asyncio.gather(*jobs)
            elapsed = time.perf_counter() - start
            print(f"4 concurrent {kind} requests x 64 tokens: {elapsed:.2f} s ({4 * 64 / elapsed:.0f} tok/s overall)")


def main() -> None:
    from conftest import ServerProcess

    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--image-size", type=int, default=448)
    ap.add_argument("--arch", default="qwen2_vl", choices=["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = build(Path(tmp) / "model", args.arch, args.image_size)
        server = ServerProcess([str(model), "--served-model-name", "m"], Path(tmp) / "server.log")
        try:
            server.wait_ready()
            asyncio.run(run(server.base_url, args.repeats, args.image_size))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
