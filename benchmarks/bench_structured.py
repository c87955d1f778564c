"""Cost of constrained decoding: tokens/s with a JSON schema vs unconstrained, concurrency 1 and 8.

    .venv/bin/python benchmarks/bench_structured.py [--repeats 5]

One server (the demo model). Per repeat and concurrency, an unconstrained round and a schema round
run back to back (alternating order). Each request generates up to 256 tokens at temperature 1; the
unconstrained round uses ignore_eos so both rounds produce long outputs. Reported: completion tokens
per second of wall time (median, min-max) and the median per-repeat ratio schema/unconstrained.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from bench_engine import ROOT, fmt  # noqa: F401  (puts tests/ on sys.path)

SCHEMA = {
    "type": "object",
    "properties": {"items": {"type": "array", "minItems": 8, "maxItems": 8,
                             "items": {"type": "object",
                                       "properties": {"name": {"type": "string", "maxLength": 10},
                                                      "qty": {"type": "integer", "minimum": 0, "maximum": 999},
                                                      "kind": {"enum": ["tool", "food", "book"]}},
                                       "required": ["name", "qty", "kind"], "additionalProperties": False}}},
    "required": ["items"], "additionalProperties": False,
}


async def one(client, url: str, constrained: bool, i: int) -> int:
    body = {"model": "m", "messages": [{"role": "user", "content": f"List {i}"}], "max_tokens": 256,
            "temperature": 1.0, "seed": i}
    if constrained:
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "list", "schema": SCHEMA}}
    else:
        body["ignore_eos"] = True
    resp = await client.post(f"{url}/v1/chat/completions", json=body)
    resp.raise_for_status()
    data = resp.json()
    if constrained:
        json.loads(data["choices"][0]["message"]["content"]) if data["choices"][0]["finish_reason"] == "stop" else None
    return data["usage"]["completion_tokens"]


def round_tps(url: str, concurrency: int, constrained: bool) -> float:
    async def run() -> float:
        async with httpx.AsyncClient(timeout=600) as client:
            t0 = time.perf_counter()
            tokens = await asyncio.gather(*(one(client, url, constrained, i) for i in range(concurrency)))
            return sum(tokens) / (time.perf_counter() - t0)

    return asyncio.run(run())


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    args = p.parse_args()
    from conftest import ServerProcess

    from vllm_mlx.models.demo import ensure_demo_model

    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess([str(ensure_demo_model())], Path(tmp) / "log", {**os.environ, "HF_HUB_OFFLINE": "1"})
        try:
            server.wait_ready()
            results = {(c, m): [] for c in args.concurrency for m in (False, True)}
            for c in args.concurrency:
                round_tps(server.base_url, c, False), round_tps(server.base_url, c, True)  # warm-up
            for rep in range(args.repeats):
                for c in args.concurrency:
                    for m in ((False, True) if rep % 2 == 0 else (True, False)):
                        results[(c, m)].append(round_tps(server.base_url, c, m))
        finally:
            server.stop()
    print(f"demo model; up to 256 tokens per request; median (min-max) of {args.repeats} repeats")
    print("| concurrency | unconstrained tok/s | JSON schema tok/s | schema/unconstrained |")
    print("|---|---|---|---|")
    for c in args.concurrency:
        free, cons = results[(c, False)], results[(c, True)]
        ratios = [b / a for a, b in zip(free, cons)]
        print(f"| {c} | {fmt(free)} | {fmt(cons)} | {statistics.median(ratios):.2f} "
              f"({min(ratios):.2f}-{max(ratios):.2f}) |")


if __name__ == "__main__":
    main()
