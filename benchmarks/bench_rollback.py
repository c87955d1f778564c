"""What rolling back rejected proposals costs: the verify step keeping each position's state of the
Gated DeltaNets and the MTP head (each row takes the one after its last kept position,
src/vllm_mlx/models/position_states.py) against the snapshot and second forward over the kept
positions (src/vllm_mlx/engine/rollback.py) -- one engine, switching between the two every round
(``ModelRunner.keeps_positions``), in one process. Wall time of the rows' whole requests (prompt
included), median of the rounds and of the paired per-round ratios.

    python -c "from vllm_mlx_testing.arch_models import build_arch_model as b; from vllm_mlx_testing.builders import add_mtp_head as m; m(b('/tmp/mtp-part35', 'qwen3_5'), exact=True, attending=1.0)"
    OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/bench_rollback.py /tmp/mtp-part35 --rows 1 16 --k 4
"""

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_mtp_feed import Blocking  # noqa: E402  (imports vllm_mlx first: OpenBLAS before MLX)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--method", default="mtp", help="the --speculative method (default: mtp)")
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--k", type=int, default=4, help="every step a verify step of at most K proposals a row "
                        "(0: the engine's own choice of step)")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--prompt", default="Tell me a story about the sea and the ships that sail on it")
    args = parser.parse_args()
    side = Blocking(args.model, args.method)
    runner, speculator = side.engine.core.runner, side.engine.core.speculator
    if args.k:
        speculator.rates.choose = lambda rows: args.k
    prompt = args.prompt
    for rows in args.rows:
        side.run(prompt, rows, 16)  # warm-up
        times: dict[bool, list[float]] = {True: [], False: []}
        before = dict(speculator.stats.as_dict())
        for i in range(args.rounds):
            for keep in (True, False) if i % 2 else (False, True):
                runner.keeps_positions = keep
                times[keep].append(side.run(prompt, rows, args.tokens))
        stats = speculator.stats.as_dict()
        ratio = statistics.median(a / b for a, b in zip(times[True], times[False]))
        print(f"{rows} rows, {args.tokens} tokens: kept states {statistics.median(times[True]):.3f} s, second forward "
              f"{statistics.median(times[False]):.3f} s, time ratio {ratio:.3f}; "
              f"{stats['accepted'] - before['accepted']} of {stats['proposed'] - before['proposed']} proposed tokens "
              f"accepted in {stats['verify_steps'] - before['verify_steps']} verify steps, "
              f"{stats['rollback_forwards'] - before['rollback_forwards']} second forwards")


if __name__ == "__main__":
    main()
