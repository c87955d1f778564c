"""Where an engine step's time goes: wall time per phase, summed over steps (off unless asked for).

The phases follow :meth:`EngineCore.run`:

- ``schedule``: make room in memory, admit prompts, plan the step's chunks;
- ``build``: build the decode graph of step t+1 (model forward and sampler) in Python;
- ``launch``: ``mx.async_eval`` of that graph. On a GPU this only enqueues work; MLX's CPU backend
  returns once the queued work has (nearly) run, so there it holds the device time as well;
- ``prefill``: prompt chunks (graph, launch and compute together);
- ``wait``: waiting for step t's tokens to be ready (device time the host could not hide);
- ``read``: copying step t's tokens (and logprobs) to Python lists;
- ``post``: applying them -- detokenizing, stop checks, deltas, grammar advance, finished rows leave;
- ``join``: first tokens of freshly prefilled rows, which join the batch.
"""

from __future__ import annotations

import time

PHASES = ("schedule", "build", "launch", "prefill", "wait", "read", "post", "join")


class StepProfile:
    def __init__(self) -> None:
        self.totals = dict.fromkeys(PHASES, 0.0)
        self.steps = 0
        self.decode_steps = 0  # steps that ran a decode batch
        self.rows = 0  # decode rows summed over steps
        self._last = 0.0

    def start(self) -> None:
        self.steps += 1
        self._last = time.perf_counter()

    def mark(self, phase: str) -> None:
        """The time since the previous mark (or the step's start) was spent in ``phase``."""
        now = time.perf_counter()
        self.totals[phase] += now - self._last
        self._last = now

    def decoded(self, rows: int) -> None:
        self.decode_steps += 1
        self.rows += rows

    def report(self) -> dict:
        """Milliseconds per step by phase, the total, and the mean decode rows."""
        steps = max(self.steps, 1)
        per_step = {p: 1e3 * t / steps for p, t in self.totals.items()}
        return {"steps": self.steps, "mean_rows": self.rows / max(self.decode_steps, 1),
                "ms_per_step": per_step, "total_ms_per_step": sum(per_step.values())}
