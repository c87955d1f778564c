"""What feeding an MTP head costs a plain decode step: the engine serving a model with its head
(``--speculative mtp``) but never verifying -- every position's pair still goes through the head's
projection and its layer's key projections, written 16 steps at a time -- against the engine
without speculation, alternating, in one process. Paired ratios of wall time (prompt included),
median of the rounds.

    python -c "from vllm_mlx_testing.arch_models import build_arch_model as b; from vllm_mlx_testing.builders import add_mtp_head as m; m(b('/tmp/mtp-glm-random', 'glm4_moe_lite'))"
    OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/bench_mtp_feed.py /tmp/mtp-glm-random
"""

import argparse
import statistics
import threading
import time

import vllm_mlx  # noqa: F401  (loads OpenBLAS before MLX starts)
from vllm_mlx.engine.config import EngineConfig
from vllm_mlx.engine.engine import LLMEngine
from vllm_mlx.engine.request import GenerationRequest, SamplingParams
from vllm_mlx.models.loader import load_model


class Blocking:
    """An engine whose requests are run to their end, for timing."""

    def __init__(self, path: str, speculative: str):
        self.done, self.cond, self.n = set(), threading.Condition(), 0
        self.engine = LLMEngine(lambda: load_model(path, compute_dtype="float32"),
                                EngineConfig(max_num_seqs=16, speculative=speculative), self._on)
        self.tokenizer = self.engine.start().tokenizer

    def _on(self, outputs) -> None:
        with self.cond:
            self.done.update(o.request_id for o in outputs if o.finished)
            self.cond.notify_all()

    def run(self, prompt: str, rows: int, tokens: int) -> float:
        start, ids = time.perf_counter(), []
        for _ in range(rows):
            self.n += 1
            ids.append(f"r{self.n}")
            self.engine.add_request(GenerationRequest(ids[-1], self.tokenizer.encode(prompt), SamplingParams(
                max_tokens=tokens, temperature=0, ignore_eos=True)))
        with self.cond:
            self.cond.wait_for(lambda: all(i in self.done for i in ids), 600)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    fed, plain = Blocking(args.model, "mtp"), Blocking(args.model, "off")
    fed.engine.core.speculator.worth_trying = lambda seqs: False  # never verify: the feed alone
    prompt = "Tell me a story about the sea and the ships that sail on it"
    for rows in args.rows:
        fed.run(prompt, rows, 16), plain.run(prompt, rows, 16)  # warm-up
        ratios = []
        for i in range(args.rounds):  # which engine runs first alternates: the second of a pair runs warmer
            if i % 2:
                plain_time = plain.run(prompt, rows, args.tokens)
                fed_time = fed.run(prompt, rows, args.tokens)
            else:
                fed_time = fed.run(prompt, rows, args.tokens)
                plain_time = plain.run(prompt, rows, args.tokens)
            ratios.append(fed_time / plain_time)
        print(f"{rows} rows, {args.tokens} tokens: time with the head fed / without, median of {args.rounds}: "
              f"{statistics.median(ratios):.3f} (rounds {', '.join(f'{r:.3f}' for r in ratios)})")
    fed.engine.shutdown(), plain.engine.shutdown()


if __name__ == "__main__":
    main()
