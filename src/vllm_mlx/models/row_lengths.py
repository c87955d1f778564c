"""Recurrent layers that stop at each row's length, where mlx-lm's own do not yet.

Rolling back rejected speculative proposals re-runs a step's kept positions right-padded, with each
row's count in its recurrent caches' ``lengths`` (engine/rollback.py): a layer must leave every row
with the state its own positions give. mlx-lm's Nemotron-H Mamba mixer stops its convolution window
there, but does not hand the lengths to its state-space scan, although mlx-lm's scan
(``mlx_lm.models.ssm.ssm_attn``) takes them. :func:`honour_row_lengths` swaps such mixers for a
subclass that does; without lengths (every other forward) the mixer runs as mlx-lm's.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.nemotron_h import NemotronHMamba2Mixer
from mlx_lm.models.ssm import ssm_attn


class LengthAwareMamba2Mixer(NemotronHMamba2Mixer):
    """Nemotron-H's Mamba mixer whose scan ends each row's state at ``cache.lengths`` when set."""

    def _ssm(self, hidden_states: mx.array, B: mx.array, C: mx.array, dt: mx.array, cache, mask):
        lengths = None if cache is None else cache.lengths
        if lengths is None:
            return super()._ssm(hidden_states, B, C, dt, cache, mask)
        b, n = hidden_states.shape[:2]
        y, cache[1] = ssm_attn(
            hidden_states.reshape(b, n, self.num_heads, self.head_dim), self.A_log,
            B.reshape(b, n, self.n_groups, self.ssm_state_size), C.reshape(b, n, self.n_groups, self.ssm_state_size),
            self.D.astype(hidden_states.dtype), dt, self.dt_bias, cache[1], self.time_step_limit,
            mask=mask, lengths=lengths)
        return y.reshape(b, n, self.intermediate_size)


def honour_row_lengths(model: nn.Module) -> int:
    """Swap the model's recurrent layers that ignore ``cache.lengths`` for ones that honour it; returns
    how many were swapped."""
    if not isinstance(model, nn.Module):
        return 0
    swapped = 0
    for _, module in model.named_modules():
        if type(module) is NemotronHMamba2Mixer:
            module.__class__ = LengthAwareMamba2Mixer
            swapped += 1
    return swapped
