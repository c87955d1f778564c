"""How close the speculating engine's choice of step (src/vllm_mlx/engine/step_rates.py) comes to the
best fixed choice, against the engine without speculation.

Engines in-process, one per side: plain (no speculation), ``chooser`` (``--speculative ngram`` as
served: it measures each kind of step and runs the fastest), ``K=1``/``K=2``/``K=4`` (every step a
verify step of at most K proposals per row, where rows have any), and with ``--other-chooser FILE``
an engine whose ``StepRates`` comes from FILE (e.g. an earlier version: ``git show
REV:src/vllm_mlx/engine/step_rates.py > /tmp/old.py``). Every round runs the same prompts on every
side, the order rotated and reversed from round to round (with the order only reversed, the same
chooser on two sides measured 2.02 and 2.35 at one row); tokens/s include the prefill (the same on every side); ratios to the plain
engine are medians of per-round ratios.

Prompts: ``random`` (random token ids, as `vllm-mlx bench rows`: rows fall into the tiny models'
loops at different times) or ``repeating`` (one repeating phrase: every row has proposals at once).

    OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/bench_step_choice.py --model MODEL \
        [--rows 16] [--rounds 7] [--prompts random|repeating] [--other-chooser FILE]
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import statistics
import sys
import threading
import time
from pathlib import Path

import vllm_mlx  # noqa: F401  (loads OpenBLAS before MLX starts)
from vllm_mlx.engine.config import EngineConfig
from vllm_mlx.engine.engine import LLMEngine
from vllm_mlx.engine.request import GenerationRequest, SamplingParams
from vllm_mlx.models.loader import load_model


class Side:
    """One engine and a way to run a batch of prompts to the end."""

    def __init__(self, model: str, **config):
        self.done: dict[str, threading.Event] = {}
        self.engine = LLMEngine(lambda: load_model(model), EngineConfig(prefix_cache=False, max_num_seqs=256, **config),
                                self._on)
        self.tokenizer = self.engine.start().tokenizer
        self.n = 0

    def _on(self, outputs) -> None:
        for o in outputs:
            if o.finished:
                self.done[o.request_id].set()

    def run(self, prompts: list[list[int]], tokens: int) -> float:
        ids = []
        start = time.perf_counter()
        for p in prompts:
            self.n += 1
            rid = f"r{self.n}"
            self.done[rid] = threading.Event()
            self.engine.add_request(GenerationRequest(rid, p, SamplingParams(max_tokens=tokens, temperature=0,
                                                                             ignore_eos=True)))
            ids.append(rid)
        for rid in ids:
            self.done[rid].wait(600)
        return len(prompts) * tokens / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--prompts", choices=("random", "repeating"), default="random")
    ap.add_argument("--other-chooser", type=Path)
    args = ap.parse_args()

    sides = {"plain": Side(args.model, speculative="off"), "chooser": Side(args.model, speculative="ngram")}
    for k in (1, 2, 4):
        sides[f"K={k}"] = Side(args.model, speculative="ngram")
        sides[f"K={k}"].engine.core.speculator.rates.forced = lambda rows, k=k: k
    if args.other_chooser:
        spec = importlib.util.spec_from_file_location("other_step_rates", args.other_chooser)
        other = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # (its dataclasses look it up)
        spec.loader.exec_module(other)
        sides["other chooser"] = Side(args.model, speculative="ngram")
        speculator = sides["other chooser"].engine.core.speculator
        speculator.rates = other.StepRates(speculator.num_tokens)
        if not hasattr(speculator.rates, "settled_on_plain"):  # a chooser from before it: always asked
            speculator.rates.settled_on_plain = lambda rows: False
    phrase = sides["plain"].tokenizer.encode("again: " + "one two three four " * 4)
    rates: dict[str, list[float]] = {name: [] for name in sides}
    for rnd in range(args.rounds + 1):  # the first round warms up
        rng = random.Random(rnd)
        prompts = ([[rng.randrange(10, 1000) for _ in range(24)] for _ in range(args.rows)] if args.prompts == "random"
                   else [phrase[:len(phrase) - i % 3] for i in range(args.rows)])
        order = list(sides.items())
        order = order[rnd % len(order):] + order[:rnd % len(order)]  # each side in every position in turn
        for name, side in (order if rnd % 2 else order[::-1]):
            rate = side.run(prompts, args.tokens)
            if rnd:
                rates[name].append(rate)
        print(f"round {rnd} done", file=sys.stderr)
    print(f"{args.model}, {args.rows} rows, {args.tokens} tokens, {args.prompts} prompts, {args.rounds} rounds")
    print("| side | tok/s (median) | / plain (median of rounds) | proposals accepted |")
    print("|---|---|---|---|")
    for name, side in sides.items():
        ratio = statistics.median(a / b for a, b in zip(rates[name], rates["plain"]))
        stats = side.engine.stats.speculative
        accepted = "—" if not stats else f"{stats['accepted']} of {stats['proposed']}"
        print(f"| {name} | {statistics.median(rates[name]):.0f} | {ratio:.2f} | {accepted} |")
    for side in sides.values():
        side.engine.shutdown()


if __name__ == "__main__":
    main()
