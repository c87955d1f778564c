"""Where the engine thread's time goes: cProfile around every engine step during one batch.

    PYTHONPATH=src .venv/bin/python benchmarks/profile_engine.py MODEL [--prompts 10] [--tokens 32]

The engine runs in-process (prefix cache off); a warm-up batch first, then the profiled batch.
cProfile sees only the thread it is enabled on, so it is switched on inside each step.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats

import vllm_mlx  # noqa: F401  (OpenBLAS before mlx)
from vllm_mlx.bench.engine_bench import encode_prompts, run_batch
from vllm_mlx.bench.targets import EngineTarget
from vllm_mlx.engine.engine import LLMEngine


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--prompts", type=int, default=10)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--top", type=int, default=18)
    args = p.parse_args()
    profile = cProfile.Profile()
    active = {"on": False}
    step = LLMEngine._step_safely

    def profiled_step(self):
        if not active["on"]:
            return step(self)
        profile.enable()
        try:
            return step(self)
        finally:
            profile.disable()

    LLMEngine._step_safely = profiled_step

    async def run() -> dict:
        target = EngineTarget(args.model, max_num_seqs=max(args.prompts, 1), prefix_cache=False)
        async with target:
            await run_batch(target, encode_prompts(target, args.prompts, 24, 0), 8)  # warm-up
            active["on"] = True
            return await run_batch(target, encode_prompts(target, args.prompts, 24, 1), args.tokens)

    row = asyncio.run(run())
    print({k: round(v, 2) for k, v in row.items()})
    pstats.Stats(profile).sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    main()
