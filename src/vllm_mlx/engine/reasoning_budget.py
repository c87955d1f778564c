"""The reasoning budget (``max_thinking_tokens``): once a row has reasoned that many tokens, the
engine writes the end-of-reasoning marker itself and the model goes on with its answer.

States: *answering* (outside a reasoning block) -> *reasoning* (after the start marker, or from the
first token when the prompt opened the block) -> *closing* (budget spent: the end marker's tokens
are forced one by one) -> *answering*. The end marker written by the model itself also closes the
block; a start marker opens it again, with the budget already spent.
"""

from __future__ import annotations


class ReasoningBudget:
    def __init__(self, budget: int, markers: tuple[tuple[int, ...], tuple[int, ...]], starts_in_reasoning: bool):
        self.budget = budget
        self.start, self.end = list(markers[0]), list(markers[1])
        self.in_reasoning = starts_in_reasoning
        self.reasoning_tokens = 0
        # Tokens the next steps must produce: the rest of the end marker while closing.
        self.forced: list[int] = list(self.end) if starts_in_reasoning and budget == 0 else []

    @property
    def next_forced(self) -> int | None:
        """The token the row must produce next, or None (the model chooses)."""
        return self.forced[0] if self.forced else None

    def on_token(self, token: int, output_ids: list[int]) -> None:
        """Advance over ``token``, the last of ``output_ids``."""
        if self.forced and token == self.forced[0]:
            self.forced.pop(0)
        if self.in_reasoning:
            self.reasoning_tokens += 1
            if output_ids[-len(self.end):] == self.end:
                self.in_reasoning, self.forced = False, []
            elif self.reasoning_tokens >= self.budget and not self.forced:
                self.forced = list(self.end)  # close the reasoning: the model answers next
        elif output_ids[-len(self.start):] == self.start:
            self.in_reasoning = True
