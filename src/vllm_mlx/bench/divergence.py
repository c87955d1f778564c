"""`vllm-mlx bench divergence`: does greedy output depend on what else runs in the batch?

Each prompt is generated greedily alone (serial, twice: the second pass is the baseline that
shows run-to-run noise of the same setting), then all prompts at once (concurrent). A prompt
*agrees* when the concurrent output equals its first serial output exactly (token ids in-process,
text over HTTP). Reported: agreement k/N with a 95% Wilson interval, and where diverging
outputs first differ.
"""

from __future__ import annotations

import asyncio
import statistics

from .presets import make_prompts
from .stats import wilson_interval


def first_difference(a, b) -> int | None:
    """Index of the first differing element (None when equal)."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def agreement(reference: list, other: list) -> dict:
    diffs = [first_difference(a, b) for a, b in zip(reference, other)]
    same = sum(d is None for d in diffs)
    low, high = wilson_interval(same, len(diffs))
    diverged = [d for d in diffs if d is not None]
    return {"agree": same, "total": len(diffs), "rate": same / len(diffs) if diffs else float("nan"),
            "ci95": [low, high], "first_difference": diffs,
            "median_first_difference": statistics.median(diverged) if diverged else None}


async def run_divergence(target, num_prompts: int = 16, max_tokens: int = 32, prompt_words: int = 24,
                         progress=None) -> dict:
    prompts = make_prompts(num_prompts, prompt_words, seed=7)
    messages = [[{"role": "user", "content": p}] for p in prompts]

    def key(rec):
        if rec.error:
            raise RuntimeError(f"request failed: {rec.error}")
        return rec.token_ids or rec.text

    async def serial() -> list:
        out = []
        for m in messages:
            out.append(key(await target.chat(m, max_tokens)))
            if progress is not None:
                progress.update(1)
        return out

    first = await serial()
    second = await serial()
    together = [key(r) for r in await asyncio.gather(*(target.chat(m, max_tokens) for m in messages))]
    if progress is not None:
        progress.update(num_prompts)
    return {"target": target.name, "num_prompts": num_prompts, "max_tokens": max_tokens,
            "compared_on": "token ids" if first and not isinstance(first[0], str) else "text",
            "serial_vs_serial": agreement(first, second), "serial_vs_concurrent": agreement(first, together)}


def format_divergence(result: dict) -> str:
    lines = [f"greedy agreement on {result['num_prompts']} prompts x {result['max_tokens']} tokens "
             f"({result['target']}; compared on {result['compared_on']})",
             "| comparison | identical | rate [95% Wilson CI] | median first difference (diverged only) |",
             "|---|---|---|---|"]
    for name in ("serial_vs_serial", "serial_vs_concurrent"):
        a = result[name]
        lines.append(f"| {name.replace('_', ' ')} | {a['agree']}/{a['total']} | {a['rate']:.2f} "
                     f"[{a['ci95'][0]:.2f}, {a['ci95'][1]:.2f}] | {a['median_first_difference']} |")
    return "\n".join(lines)
