"""What a draft model's proposals cost per verify step when the rows accept different numbers of them
(src/vllm_mlx/engine/draft.py): the draft is fed each row's new tokens right-padded to the longest, and
a row with fewer loses the padding again -- as holes in place, or (before) by moving the row's whole
cache right, which costs a copy of its context every step. The proposer alone, on R rows of L tokens of
context: each step every row gains a random number (0..K accepted proposals, plus the served model's
own token), then the draft proposes K tokens a row. Median milliseconds per step over the steps.

    OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/bench_draft_cache.py --rows 8 --context 256 4096

Run it with another checkout's ``src`` first on ``PYTHONPATH`` to compare two versions.
"""

import argparse
import random
import statistics
import time
from pathlib import Path

import vllm_mlx  # noqa: F401  (OpenBLAS before MLX)

DRAFT = dict(family="qwen3", hidden_size=1024, num_hidden_layers=4, num_attention_heads=16, num_key_value_heads=8,
             intermediate_size=3072, vocab_size=4096, init_scale=8.0, tie_word_embeddings=False)


class Row:
    def __init__(self, prompt: list[int]):
        self.prompt_ids, self.output_ids = prompt, [prompt[-1]]


def main() -> None:
    from vllm_mlx.engine.draft import DraftProposer
    from vllm_mlx.models.loader import load_model
    from vllm_mlx_testing import build_tiny_model

    parser = argparse.ArgumentParser()
    parser.add_argument("--model", help="a draft model (default: a 58 M Qwen3 built under /tmp/draft-bench)")
    parser.add_argument("--rows", type=int, nargs="+", default=[8])
    parser.add_argument("--context", type=int, nargs="+", default=[256, 4096])
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    path = args.model
    if path is None:
        path = Path("/tmp/draft-bench/mid")
        if not (path / "model.safetensors").exists():
            build_tiny_model(path, **DRAFT)
    model = load_model(str(path), compute_dtype="float32").model
    for rows in args.rows:
        for context in args.context:
            rng = random.Random(0)
            proposer = DraftProposer(model, vocab_limit=4000)
            batch = [Row([rng.randrange(10, 4000) for _ in range(context)]) for _ in range(rows)]
            while not all(proposer.propose(batch, [args.k] * rows)):  # every row's context in the draft
                for row in batch:
                    row.output_ids.append(rng.randrange(10, 4000))
            times = []
            for _ in range(args.steps):
                for row in batch:
                    row.output_ids += [rng.randrange(10, 4000) for _ in range(rng.randint(0, args.k) + 1)]
                start = time.perf_counter()
                proposer.propose(batch, [args.k] * rows)
                times.append(time.perf_counter() - start)
            print(f"{rows} rows, {context} tokens of context, K={args.k}: {1000 * statistics.median(times):.1f} ms "
                  f"a step (median of {args.steps})", flush=True)


if __name__ == "__main__":
    main()
