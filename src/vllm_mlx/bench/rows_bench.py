"""`vllm-mlx bench rows MODEL`: the engine in-process against the bare mlx-lm loop at several batch
sizes, and single-stream against ``mlx_lm.stream_generate`` -- the engine's overhead per step.

Each round runs, for every row count B, the engine (B prompts submitted together; decode rate once
every row has its first token) and the bare batched loop at B rows with the same prompt length and
token count (:class:`~.ceiling.Ceiling`); at B = 1 also ``mlx_lm.stream_generate``. On the CPU, where
the engine runs its norms and RoPEs fused and its large linear layers as few-row products
(:mod:`vllm_mlx.models.cpu_decode`), also the bare loop with the same modules: the engine's own
overhead, the model run alike. The order within
a round alternates between rounds so every side sees the same machine conditions, and ratios are
paired per round, then summarized (median and 95% interval). With ``profile`` one more engine run per
B times each step's phases (:mod:`vllm_mlx.engine.step_profile`). With ``speculative`` or ``loras`` a
second engine runs the same prompts with speculation, or with its rows spread over the LoRA adapters
(row i decodes with adapter i mod N), against the plain engine on the base model.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass

from .engine_bench import decode_rate, single_decode_rate
from .stats import summarize
from .targets import EngineTarget


@dataclass
class RowsBenchOptions:
    model: str
    rows: tuple[int, ...] = (1, 16, 64)
    tokens: int = 128
    prompt_len: int = 24
    repeat: int = 5
    warmup: int = 1
    profile: bool = False
    temperature: float = 0.0  # > 0: the engine's sampler against mlx-lm's (make_sampler) in the references
    speculative: str = "off"  # "ngram", "draft" or "mtp": a second engine with speculation, against the plain one
    draft_model: str | None = None  # with speculative "draft"
    loras: tuple[tuple[str, str], ...] = ()  # (name, folder): a second engine whose rows use these adapters


def random_prompts(n: int, length: int, seed: int, vocab: int) -> list[list[int]]:
    """``n`` prompts of ``length`` token ids drawn from the ordinary part of the vocabulary."""
    rng = random.Random(seed)
    high = max(min(vocab - 1, 1000), 11)
    return [[rng.randrange(10, high) for _ in range(length)] for _ in range(n)]


async def engine_rows(target: EngineTarget, prompts: list[list[int]], tokens: int, temperature: float = 0.0,
                      adapters: tuple[str, ...] = ()) -> float:
    """Decode tok/s of the engine with every prompt's row running (row i with ``adapters[i % N]``)."""
    records = await asyncio.gather(*(target.generate(p, tokens, temperature, adapters[i % len(adapters)] if adapters
                                                     else None) for i, p in enumerate(prompts)))
    failed = [r.error for r in records if r.error]
    if failed:
        raise RuntimeError(f"engine request failed: {failed[0]}")
    return single_decode_rate(records[0]) if len(records) == 1 else decode_rate(records)


async def run_rows_bench(opts: RowsBenchOptions, progress=None) -> dict:
    from .ceiling import Ceiling

    rounds: list[dict] = []
    async with contextlib.AsyncExitStack() as stack:
        target = await stack.enter_async_context(
            EngineTarget(opts.model, max_num_seqs=max(opts.rows), prefix_cache=False))
        speculating = None
        if opts.speculative != "off":
            speculating = await stack.enter_async_context(
                EngineTarget(opts.model, max_num_seqs=max(opts.rows), prefix_cache=False, speculative=opts.speculative,
                             draft_model=opts.draft_model))
        adapted = None
        if opts.loras:
            adapted = await stack.enter_async_context(
                EngineTarget(opts.model, max_num_seqs=max(opts.rows), prefix_cache=False, loras=opts.loras,
                             max_loras=len(opts.loras)))
        names = tuple(name for name, _ in opts.loras)
        ceiling = Ceiling(opts.model)  # this (main) thread's own copy of the model
        vocab = target.engine.engine.vocab_size
        for i in range(opts.warmup + opts.repeat):
            row: dict = {}
            for b in (opts.rows if i % 2 == 0 else tuple(reversed(opts.rows))):
                prompts = random_prompts(b, opts.prompt_len, seed=1000 * i + b, vocab=vocab)
                sides = ["engine", "bare"] + (["bare_fused"] if ceiling.fusable else []) \
                    + (["mlx_generate"] if b == 1 else []) + (["spec"] if speculating else []) \
                    + (["lora", "lora_none"] if adapted else [])
                for side in (sides if i % 2 == 0 else reversed(sides)):
                    if side == "engine":
                        row[f"engine_{b}"] = await engine_rows(target, prompts, opts.tokens, opts.temperature)
                    elif side.startswith("lora"):  # rows over the adapters; rows of none, on the same engine
                        row[f"{side}_{b}"] = await engine_rows(adapted, prompts, opts.tokens, opts.temperature,
                                                               names if side == "lora" else ())
                    elif side == "spec":
                        row[f"spec_{b}"] = await engine_rows(speculating, prompts, opts.tokens, opts.temperature)
                    elif side.startswith("bare"):
                        row[f"{side}_{b}"] = ceiling.batched_decode(b, opts.tokens, opts.prompt_len, seed=i,
                                                                    temperature=opts.temperature,
                                                                    fused=side == "bare_fused").decode_tps
                    else:
                        row["mlx_generate_1"] = ceiling.stream_generate(prompts[0], opts.tokens,
                                                                        opts.temperature).decode_tps
            if i >= opts.warmup:
                rounds.append(row)
            if progress is not None:
                progress.update(1)
        profiles = await _profiles(target, opts, vocab) if opts.profile else {}
        speculation = None if speculating is None else speculating.engine.engine.stats.speculative
    out = {"model": opts.model, "options": opts.__dict__, "rounds": rounds,
           "summary": summarize_rounds(rounds, opts.rows), "profiles": profiles}
    if speculation is not None:
        out["speculation"] = speculation
    return out


async def _profiles(target: EngineTarget, opts: RowsBenchOptions, vocab: int) -> dict:
    from ..engine.step_profile import StepProfile

    core = target.engine.engine.core
    out = {}
    for b in opts.rows:
        core.profile = StepProfile()  # read by the engine thread at each step's start
        await engine_rows(target, random_prompts(b, opts.prompt_len, seed=-b, vocab=vocab), opts.tokens,
                          opts.temperature)
        out[b] = core.profile.report()
        core.profile = None
    return out


def summarize_rounds(rounds: list[dict], rows: tuple[int, ...]) -> dict:
    def s(values):
        return summarize(values).as_dict()

    out = {}
    for b in rows:
        out[b] = {"engine": s([r[f"engine_{b}"] for r in rounds]), "bare": s([r[f"bare_{b}"] for r in rounds]),
                  "ratio": s([r[f"engine_{b}"] / r[f"bare_{b}"] for r in rounds])}
        if f"bare_fused_{b}" in rounds[0]:  # the engine's own overhead, the model run alike
            out[b]["bare_fused"] = s([r[f"bare_fused_{b}"] for r in rounds])
            out[b]["ratio_fused"] = s([r[f"engine_{b}"] / r[f"bare_fused_{b}"] for r in rounds])
        if f"spec_{b}" in rounds[0]:
            out[b]["speculative"] = s([r[f"spec_{b}"] for r in rounds])
            out[b]["ratio_speculative"] = s([r[f"spec_{b}"] / r[f"engine_{b}"] for r in rounds])
        if f"lora_{b}" in rounds[0]:
            out[b]["lora"] = s([r[f"lora_{b}"] for r in rounds])
            out[b]["ratio_lora"] = s([r[f"lora_{b}"] / r[f"engine_{b}"] for r in rounds])
            out[b]["lora_none"] = s([r[f"lora_none_{b}"] for r in rounds])
            out[b]["ratio_lora_none"] = s([r[f"lora_none_{b}"] / r[f"engine_{b}"] for r in rounds])
        if b == 1:
            out[b]["mlx_generate"] = s([r["mlx_generate_1"] for r in rounds])
            out[b]["ratio_mlx_generate"] = s([r["engine_1"] / r["mlx_generate_1"] for r in rounds])
    return out


def format_rows(result: dict) -> list[str]:
    """The summary as a markdown table (and the profile table when there is one)."""
    def f(d, digits=1):
        return f"{d['median']:.{digits}f} [{d['low']:.{digits}f}, {d['high']:.{digits}f}]"

    lines = ["| rows | engine decode tok/s | reference | reference tok/s | engine/reference |", "|---|---|---|---|---|"]
    for b, s in result["summary"].items():
        lines.append(f"| {b} | {f(s['engine'])} | bare mlx-lm loop | {f(s['bare'])} | {f(s['ratio'], 2)} |")
        if "bare_fused" in s:
            lines.append(f"| {b} | {f(s['engine'])} | the bare loop with the engine's CPU decode modules | "
                         f"{f(s['bare_fused'])} | {f(s['ratio_fused'], 2)} |")
        if "speculative" in s:
            lines.append(f"| {b} | {f(s['speculative'])} (speculative) | the engine without speculation | "
                         f"{f(s['engine'])} | {f(s['ratio_speculative'], 2)} |")
        if "lora" in s:
            n = len(result["options"]["loras"])
            lines.append(f"| {b} | {f(s['lora'])} (rows over {min(n, b)} LoRA adapter{'s' if min(n, b) > 1 else ''}) | "
                         f"the engine on the base model | {f(s['engine'])} | {f(s['ratio_lora'], 2)} |")
            lines.append(f"| {b} | {f(s['lora_none'])} (--lora set, rows without an adapter) | the engine on the base "
                         f"model | {f(s['engine'])} | {f(s['ratio_lora_none'], 2)} |")
        if "mlx_generate" in s:
            lines.append(f"| {b} | {f(s['engine'])} | mlx_lm.stream_generate | {f(s['mlx_generate'])} | "
                         f"{f(s['ratio_mlx_generate'], 2)} |")
    spec = result.get("speculation")
    if spec:
        lines += ["", f"speculation ({spec['method']}, all rounds): {spec['accepted']} of {spec['proposed']} proposed "
                  f"tokens accepted ({spec['acceptance_rate']:.0%}) in {spec['verify_steps']} verify steps"]
    if result.get("profiles"):
        from ..engine.step_profile import PHASES

        lines += ["", "engine step profile, ms per step:", "",
                  "| rows | " + " | ".join(PHASES) + " | total |", "|---|" + "---|" * (len(PHASES) + 1)]
        for b, p in result["profiles"].items():
            ms = p["ms_per_step"]
            lines.append(f"| {b} | " + " | ".join(f"{ms[ph]:.3f}" for ph in PHASES) + f" | {p['total_ms_per_step']:.3f} |")
    return lines
