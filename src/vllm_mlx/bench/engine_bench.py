"""`vllm-mlx bench MODEL`: the engine in-process on a preset workload, optionally against its ceiling.

Every repeat submits the preset's prompts at once (fresh prompts each run, prefix cache off, so
no run reuses another's work), after ``warmup`` unmeasured runs. With ``ceiling`` each repeat also
runs the bare mlx-lm batched loop at the preset's decode batch and ``mlx_lm.stream_generate``
single-stream, alternating the order so all see the same machine conditions; ratios are
per repeat (paired), then summarized.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from ..options import DEFAULTS
from .presets import Preset, make_prompts
from .stats import summarize
from .targets import EngineTarget, StreamRecord

COLUMNS = ("total_s", "prompts_per_s", "completion_tok_per_s", "total_tok_per_s", "decode_tok_per_s")
LABELS = {"total_s": "total time s", "prompts_per_s": "prompts/s", "completion_tok_per_s": "completion tok/s",
          "total_tok_per_s": "prompt+completion tok/s", "decode_tok_per_s": "decode tok/s (all rows running)"}


@dataclass
class EngineBenchOptions:
    model: str
    preset: Preset
    repeat: int = 3
    warmup: int = 1
    ceiling: bool = False
    max_num_batched_tokens: int = DEFAULTS.max_num_batched_tokens


def decode_rate(records: list[StreamRecord]) -> float:
    """Decode tokens/s of a batch: the tokens after each stream's first / the time from the first
    stream's first token to the last token (prefill before it excluded). Robust to deltas that carry
    several tokens (a consumer that fell behind, or speculative decoding): it needs only each
    stream's first and last arrival."""
    start = min(r.chunks[0][0] for r in records)
    end = max(r.chunks[-1][0] for r in records)
    tokens = sum(r.completion_tokens for r in records) - len(records)
    return tokens / (end - start) if end > start else float("nan")


def single_decode_rate(record: StreamRecord) -> float:
    """(n - 1) tokens after the first / time from the first delta to the last (NaN when every token came
    in one delta: a consumer that fell behind the whole generation measures nothing)."""
    return decode_rate([record]) if len(record.chunks) > 1 else float("nan")


async def run_batch(target: EngineTarget, prompts: list[list[int]], max_tokens: int) -> dict:
    """All prompts submitted together; the preset's columns for this run."""
    records = await asyncio.gather(*(target.generate(p, max_tokens) for p in prompts))
    errors = [r.error for r in records if r.error]
    if errors:
        raise RuntimeError(f"engine request failed: {errors[0]}")
    start = min(r.start for r in records)
    total = max(r.end for r in records) - start
    completion = sum(r.completion_tokens for r in records)
    prompt = sum(len(p) for p in prompts)
    return {"total_s": total, "prompts_per_s": len(prompts) / total, "completion_tok_per_s": completion / total,
            "total_tok_per_s": (prompt + completion) / total, "decode_tok_per_s": decode_rate(records),
            "completion_tokens": completion, "prompt_tokens": prompt}


def encode_prompts(target: EngineTarget, n: int, words: int, seed: int) -> list[list[int]]:
    return [target.encode_chat([{"role": "user", "content": p}]) for p in make_prompts(n, words, seed)]


async def run_engine_bench(opts: EngineBenchOptions, progress=None) -> dict:
    preset = opts.preset
    target = EngineTarget(opts.model, max_num_seqs=preset.decode_rows,
                          max_num_batched_tokens=opts.max_num_batched_tokens, prefix_cache=False)
    runs: list[dict] = []
    ceiling_runs: list[dict] = []
    async with target:
        ceiling = None
        if opts.ceiling:
            from .ceiling import Ceiling

            ceiling = Ceiling(opts.model)  # this (main) thread's own copy of the model
        for i in range(opts.warmup + opts.repeat):
            measured = i >= opts.warmup
            prompts = encode_prompts(target, preset.num_prompts, preset.prompt_words, seed=1000 + i)
            row = await run_batch(target, prompts, preset.max_tokens)
            if measured:
                runs.append(row)
            if ceiling is not None:
                c = await _ceiling_round(target, ceiling, preset, prompts, i)
                if measured:
                    ceiling_runs.append(c | {"engine_decode": row["decode_tok_per_s"],
                                             "engine_completion": row["completion_tok_per_s"]})
            if progress is not None:
                progress.update(1)
    result = {"preset": preset.__dict__ | {"engine_max_num_seqs": preset.decode_rows},
              "model": opts.model, "repeat": opts.repeat, "warmup": opts.warmup, "runs": runs,
              "summary": {k: summarize([r[k] for r in runs]).as_dict() for k in COLUMNS}}
    if ceiling_runs:
        result["ceiling_runs"] = ceiling_runs
        result["ceiling_summary"] = summarize_ceiling(ceiling_runs)
    return result


async def _ceiling_round(target: EngineTarget, ceiling, preset: Preset, prompts: list[list[int]], i: int) -> dict:
    """Bare loop at the decode batch, engine single-stream and mlx_lm single-stream; order alternates."""
    batch = min(preset.num_prompts, preset.decode_rows)
    prompt_len = round(sum(map(len, prompts)) / len(prompts))
    single_prompt = prompts[0]
    out: dict = {}

    async def engine_single():
        rec = await target.generate(single_prompt, preset.max_tokens)
        out["engine_single"] = single_decode_rate(rec)

    def bare():
        run = ceiling.batched_decode(batch, preset.max_tokens, prompt_len, seed=i)
        out["bare_decode"], out["bare_total"] = run.decode_tps, run.total_tps

    def mlx_single():
        out["mlx_generate_single"] = ceiling.stream_generate(single_prompt, preset.max_tokens).decode_tps

    if i % 2 == 0:
        bare(); mlx_single(); await engine_single()  # noqa: E702
    else:
        await engine_single(); mlx_single(); bare()  # noqa: E702
    out["batch"] = batch
    return out


def summarize_ceiling(runs: list[dict]) -> dict:
    def s(values):
        return summarize(values).as_dict()

    return {
        "batch": runs[0]["batch"],
        "engine_decode": s([r["engine_decode"] for r in runs]),
        "bare_decode": s([r["bare_decode"] for r in runs]),
        "decode_ratio": s([r["engine_decode"] / r["bare_decode"] for r in runs]),
        "engine_completion": s([r["engine_completion"] for r in runs]),
        "bare_total": s([r["bare_total"] for r in runs]),
        "total_ratio": s([r["engine_completion"] / r["bare_total"] for r in runs]),
        "engine_single": s([r["engine_single"] for r in runs]),
        "mlx_generate_single": s([r["mlx_generate_single"] for r in runs]),
        "single_ratio": s([r["engine_single"] / r["mlx_generate_single"] for r in runs]),
    }
