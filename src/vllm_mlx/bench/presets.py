"""Named workloads for `vllm-mlx bench MODEL --preset NAME`."""

from __future__ import annotations

from dataclasses import dataclass

WORDS = ("the model reads every rule below before it answers and keeps each answer short clear and kind "
         "while tools are described with names arguments and types so that calls can be checked against "
         "a schema then a story about ships rivers mountains cities and the people who live there").split()


@dataclass(frozen=True)
class Preset:
    name: str
    num_prompts: int
    max_tokens: int
    max_num_seqs: int
    prefill_batch: int  # prompts per prefill forward in the configuration this preset reproduces
    completion_batch: int  # rows per decode forward
    prompt_words: int = 24
    description: str = ""

    @property
    def decode_rows(self) -> int:
        """The engine's max_num_seqs for this preset: decode rows are capped by the completion batch."""
        return min(self.max_num_seqs, self.completion_batch)


PRESETS: dict[str, Preset] = {
    # A published batched-generation configuration: 10 prompts, 64 tokens each,
    # max_num_seqs 32, prefill batch 8, completion batch 16.
    "batch10": Preset("batch10", num_prompts=10, max_tokens=64, max_num_seqs=32, prefill_batch=8,
                      completion_batch=16, description="10 prompts x 64 tokens, decode batch up to 16"),
    "batch16": Preset("batch16", num_prompts=16, max_tokens=128, max_num_seqs=16, prefill_batch=16,
                      completion_batch=16, description="16 prompts x 128 tokens: a full decode batch of 16"),
    "single": Preset("single", num_prompts=1, max_tokens=128, max_num_seqs=1, prefill_batch=1,
                     completion_batch=1, description="one stream of 128 tokens"),
}


def make_prompts(n: int, words: int = 24, seed: int = 0) -> list[str]:
    """``n`` distinct, deterministic prompts of about ``words`` words each."""
    out = []
    for i in range(n):
        body = " ".join(WORDS[(seed + i * 7 + j) % len(WORDS)] for j in range(words))
        out.append(f"Prompt {seed}-{i}: {body}")
    return out
