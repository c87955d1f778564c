"""The CPU decode modules (src/vllm_mlx/models/cpu_decode.py), measured in one engine.

One engine in-process (as `vllm-mlx bench rows` runs it); every round decodes the same prompts with
the model's modules switched between mlx's plain ``nn.RMSNorm`` / ``nn.RoPE`` / ``nn.Linear``, RoPE
fused only, norm and RoPE fused, and those with the few-row linear layers too (the engine's setting),
in alternating order; ratios are paired per round and summarized as medians. Also prints the
operations in one one-row decode step, plain and with the engine's modules (``mx.export_to_dot``).
CPU only (elsewhere the engine does not swap them).

    OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/bench_cpu_decode.py [--model demo] \
        [--rows 1 4 16 64] [--rounds 8] [--tokens 128]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import tempfile
from pathlib import Path

import vllm_mlx  # noqa: F401  (loads OpenBLAS before MLX starts)
from vllm_mlx.bench.cli import bench_model
from vllm_mlx.bench.rows_bench import engine_rows, random_prompts
from vllm_mlx.bench.targets import EngineTarget

MODES = {"plain": (False, False, False), "rope fused": (False, True, False), "both fused": (True, True, False),
         "and few-row linear": (True, True, True)}


def switch(model, norm: bool, rope: bool, linear: bool) -> None:
    """Put the decode modules (swapped in at load) in the given forms."""
    from vllm_mlx.models.cpu_decode import DECODE_FORMS, set_swapped

    set_swapped(model, False)
    set_swapped(model, True, [form for form, on in zip(DECODE_FORMS, (norm, rope, linear)) if on])


def operations(path: str) -> tuple[int, int]:
    """Operations in one one-row decode step of the model at ``path``: plain, with the engine's modules."""
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache

    from vllm_mlx.models.cpu_decode import set_swapped, swap_cpu_decode_modules
    from vllm_mlx.models.loader import load_model

    model = load_model(path, compute_dtype="float32").model
    swap_cpu_decode_modules(model)
    counts = []
    with tempfile.TemporaryDirectory() as tmp:
        for fused in (False, True):
            set_swapped(model, fused)
            cache = make_prompt_cache(model)
            model(mx.array([[5, 9, 13, 2]]), cache=cache)
            mx.eval([c.state for c in cache])  # the prompt's graph is not part of the step's
            dot = Path(tmp) / "step.dot"
            mx.export_to_dot(str(dot), model(mx.array([[7]]), cache=cache))
            counts.append(len(re.findall(r'label ="?[A-Za-z]', dot.read_text())))
    return counts[0], counts[1]


async def main(args) -> None:
    path = bench_model(args.model)
    plain, fused = operations(path)
    print(f"operations in one one-row decode step: {plain} plain, {fused} with the engine's modules\n")
    ratio_modes = [m for m in MODES if m != "plain"]
    print("| rows | " + " | ".join(f"{m} tok/s" for m in MODES) + " | "
          + " | ".join(f"{m} / plain" for m in ratio_modes) + " |")
    print("|---|" + "---|" * (len(MODES) + len(ratio_modes)))
    async with EngineTarget(path, max_num_seqs=max(args.rows), prefix_cache=False) as target:
        model = target.engine.engine.loaded.model
        vocab = target.engine.engine.vocab_size
        for b in args.rows:
            rates = {m: [] for m in MODES}
            for i in range(args.warmup + args.rounds):
                prompts = random_prompts(b, 24, seed=1000 * i + b, vocab=vocab)
                for mode in (list(MODES) if i % 2 else list(reversed(MODES))):
                    switch(model, *MODES[mode])
                    rate = await engine_rows(target, prompts, args.tokens)
                    if i >= args.warmup:
                        rates[mode].append(rate)
            switch(model, True, True, True)
            med = {m: statistics.median(v) for m, v in rates.items()}
            ratios = [statistics.median(a / p for a, p in zip(rates[m], rates["plain"])) for m in ratio_modes]
            print(f"| {b} | " + " | ".join(f"{med[m]:.0f}" for m in MODES) + " | " +
                  " | ".join(f"{r:.2f}" for r in ratios) + " |")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="demo")
    p.add_argument("--rows", type=int, nargs="+", default=[1, 4, 16, 64])
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--tokens", type=int, default=128)
    asyncio.run(main(p.parse_args()))
