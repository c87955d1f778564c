"""Recurrent layers that keep the state after every position of a verify step -- Gated DeltaNets
(Qwen3.5/3.6 text and vision-language, Qwen3-Next), LFM2's short convolutions, Nemotron-H's and
Falcon-H1's Mamba-2 mixers -- so rejected speculative proposals are dropped by picking a state, not
by running the step again.

A verify step feeds each row its newest token and its proposals; the row keeps a prefix of them. A
recurrent layer's state cannot drop positions, so the engine restored the state from before the step
and ran the kept positions through the whole model once more (engine/rollback.py): a second forward
after every verify step with a rejection. The layers here, swapped in at load
(:func:`keep_position_states`), keep every position's state instead when their cache has
``keep_positions`` set (only the engine's verify forwards set it), and say in the cache's
``position_states`` where each cache entry's value after position ``t`` is; the engine then takes,
per row and within the step's own graph, the one after its last kept position
(:func:`~vllm_mlx.engine.rollback.take_kept`). Without ``keep_positions`` (every other forward) they
run as mlx-lm's (or mlx-vlm's).

- A short convolution's state is a window of what the step feeds it: a view, on any backend.
- A Gated DeltaNet runs the delta rule a position at a time, as mlx-lm does off Metal anyway (a
  compiled step in a loop), with the step written here from the rule.
- A Mamba-2 mixer keeps its convolution window as a view too, and its scan's state after each
  position comes from the scan's closed form (:func:`scan_states`); its output is mlx-lm's.

On Metal mlx-lm runs a multi-token step in one fused kernel; a loop of per-position steps there has
not been measured against the second forward, so only the short convolutions are swapped on Metal
and the other layers roll back there as before.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.falcon_h1 import FalconH1Mixer
from mlx_lm.models.gated_delta import compute_g, normalize_qk
from mlx_lm.models.lfm2 import ShortConv
from mlx_lm.models.lfm2_moe import ShortConv as MoeShortConv
from mlx_lm.models.nemotron_h import NemotronHMamba2Mixer
from mlx_lm.models.qwen3_5 import GatedDeltaNet
from mlx_lm.models.qwen3_next import Qwen3NextGatedDeltaNet
from mlx_lm.models.ssm import compute_dt

from .row_lengths import LengthAwareMamba2Mixer


class PositionState(NamedTuple):
    """Where cache entry ``index``'s value after a step's position ``t`` is: ``source[:, t + start :
    t + start + width]`` (``squeeze``: without that axis)."""

    index: int
    source: mx.array
    start: int
    width: int
    squeeze: bool = False  # (width 1)

    def after(self, kept: mx.array, positions: dict | None = None) -> mx.array:
        """The value after each row's last kept position (``kept``: (rows,) positions kept, >= 1);
        ``positions`` keeps the gather indices for entries of the same shape (one step's layers)."""
        key = (self.source.ndim, self.start, self.width)
        at = None if positions is None else positions.get(key)
        if at is None:
            at = ((kept - 1 + self.start)[:, None] + mx.arange(self.width)).reshape(-1, self.width,
                                                                                  *[1] * (self.source.ndim - 2))
            if positions is not None:
                positions[key] = at
        picked = mx.take_along_axis(self.source, at, axis=1)
        return picked[:, 0] if self.squeeze else picked


@mx.compile
def _delta_step(state: mx.array, q: mx.array, k: mx.array, v: mx.array, g: mx.array, beta: mx.array,
                mask: mx.array | None) -> tuple[mx.array, mx.array]:
    """One position of the gated delta rule, compiled into one kernel where the backend fuses: the state
    (rows, heads, Dv, Dk) decays by ``g`` (per head) and moves toward ``v`` along ``k`` by ``beta`` (what
    it read back along ``k`` corrected); rows outside ``mask`` keep theirs. Returns (the output read
    along ``q``, the state)."""
    decayed = state * g[..., None, None]
    delta = (v - (decayed * k[..., None, :]).sum(axis=-1)) * beta[..., None]
    new = decayed + k[..., None, :] * delta[..., None]
    out = (new * q[..., None, :]).sum(axis=-1).astype(q.dtype)
    return out, new if mask is None else mx.where(mask[:, None, None, None], new, state)


def _conv_window(cache: Any, fed: mx.array, mask: mx.array | None, window: int) -> mx.array:
    """A causal convolution's input for a verify step: the cached window of earlier inputs, then ``fed``
    (zero outside ``mask``). Leaves the last ``window`` of it in ``cache[0]`` and says where each
    position's window is (the cache's first ``position_states`` entry)."""
    if mask is not None:
        fed = mx.where(mask[..., None], fed, 0)
    before = cache[0] if cache[0] is not None else mx.zeros((fed.shape[0], window, fed.shape[-1]), dtype=fed.dtype)
    conv_input = mx.concatenate([before, fed], axis=1)
    cache[0] = mx.contiguous(conv_input[:, -window:])
    cache.position_states = [PositionState(0, conv_input, 1, window)]
    return conv_input


def _recur(layer: Any, qkv: mx.array, z: mx.array, b: mx.array, a: mx.array, mask: mx.array | None,
           cache: Any, normalize: Any = None) -> mx.array:
    """The layer's convolution and gated delta rule over ``qkv`` (rows, S, conv channels), a position
    at a time, keeping each position's state in ``cache.position_states``; returns the layer's output.
    ``normalize``: the layer's own normalization of queries and keys (default: mlx-lm's)."""
    rows, steps, _ = qkv.shape
    conv_out = nn.silu(layer.conv1d(_conv_window(cache, qkv, mask, layer.conv_kernel_size - 1)))
    q, k, v = (t.reshape(rows, steps, h, d) for t, h, d in zip(
        mx.split(conv_out, [layer.key_dim, 2 * layer.key_dim], -1),
        (layer.num_k_heads, layer.num_k_heads, layer.num_v_heads),
        (layer.head_k_dim, layer.head_k_dim, layer.head_v_dim)))
    q, k = normalize(q, k) if normalize else normalize_qk(q, k, inv_scale=layer.head_k_dim**-0.5, eps=1e-6)
    g, beta = compute_g(layer.A_log, a, layer.dt_bias), mx.sigmoid(b)
    if layer.num_v_heads > layer.num_k_heads:  # (as mlx-lm's loop repeats them for every position)
        q, k = (mx.repeat(t, layer.num_v_heads // layer.num_k_heads, -2) for t in (q, k))
    state = cache[1] if cache[1] is not None else mx.zeros(
        (rows, layer.num_v_heads, layer.head_v_dim, layer.head_k_dim), dtype=mx.float32)
    outputs, states = [], []
    for t in range(steps):
        out, state = _delta_step(state, q[:, t], k[:, t], v[:, t], g[:, t], beta[:, t],
                                 None if mask is None else mask[:, t])
        outputs.append(out)
        states.append(state)
    cache[1] = state
    cache.advance(steps)
    cache.position_states.append(PositionState(1, mx.stack(states, 1), 0, 1, True))
    out = layer.norm(mx.stack(outputs, axis=1), z)
    return layer.out_proj(out.reshape(rows, steps, -1))


def _keeping(cache: Any) -> bool:
    return cache is not None and getattr(cache, "keep_positions", False)


class PositionStatesGatedDeltaNet(GatedDeltaNet):
    """Qwen3.5/3.6's Gated DeltaNet (mlx-lm) keeping each position's state in verify forwards."""

    def __call__(self, inputs: mx.array, mask: mx.array | None = None, cache: Any = None) -> mx.array:
        if not _keeping(cache) or self.sharding_group is not None:
            return super().__call__(inputs, mask, cache)
        rows, steps, _ = inputs.shape
        z = self.in_proj_z(inputs).reshape(rows, steps, self.num_v_heads, self.head_v_dim)
        return _recur(self, self.in_proj_qkv(inputs), z, self.in_proj_b(inputs), self.in_proj_a(inputs), mask, cache)


class PositionStatesQwen3NextGatedDeltaNet(Qwen3NextGatedDeltaNet):
    """Qwen3-Next's Gated DeltaNet (mlx-lm) keeping each position's state in verify forwards."""

    def __call__(self, inputs: mx.array, mask: mx.array | None = None, cache: Any = None) -> mx.array:
        if not _keeping(cache):
            return super().__call__(inputs, mask, cache)
        rows, steps, _ = inputs.shape
        q, k, v, z, b, a = self.fix_query_key_value_ordering(self.in_proj_qkvz(inputs), self.in_proj_ba(inputs))
        qkv = mx.concatenate([t.reshape(rows, steps, -1) for t in (q, k, v)], axis=-1)
        return _recur(self, qkv, z, b, a, mask, cache)


class _KeepingShortConv:
    """LFM2's gated short convolution (mlx-lm's, dense and mixture-of-experts models alike) keeping each
    position's window in verify forwards: its state is the last inputs of the convolution, a window of
    what the step feeds it."""

    def __call__(self, x: mx.array, mask: mx.array | None = None, cache: Any = None) -> mx.array:
        if not _keeping(cache):
            return super().__call__(x, mask, cache)
        gate, out_gate, x = mx.split(self.in_proj(x), 3, axis=-1)
        conv_input = _conv_window(cache, gate * x, mask, self.L_cache - 1)
        cache.advance(x.shape[1])
        return self.out_proj(out_gate * self.conv(conv_input))


class PositionStatesShortConv(_KeepingShortConv, ShortConv):
    """LFM2's short convolution keeping each position's window in verify forwards."""


class PositionStatesMoeShortConv(_KeepingShortConv, MoeShortConv):
    """LFM2-MoE's short convolution keeping each position's window in verify forwards."""


class _KeepingVisionDeltaNet:
    """mlx-vlm's Qwen3.5/3.6 Gated DeltaNet (vision-language models) keeping each position's state in
    verify forwards (rows of a step carry no lengths there)."""

    def __call__(self, inputs: mx.array, mask: mx.array | None = None, cache: Any = None) -> mx.array:
        if not _keeping(cache) or cache.lengths is not None or (mask is not None and mask.shape[0] != inputs.shape[0]):
            return super().__call__(inputs, mask, cache)
        rows, steps, _ = inputs.shape
        b, a = self._project_gates(inputs)
        z = self.in_proj_z(inputs).reshape(rows, steps, -1, self.head_v_dim)
        return _recur(self, self.in_proj_qkv(inputs), z, b, a, mask, cache, self._normalize_qk)


def _vision_delta_nets(model: nn.Module) -> dict:
    """mlx-vlm's Gated DeltaNet classes in ``model`` and their keeping subclasses (mlx-vlm is optional:
    its classes are found in the model, not imported)."""
    found = {type(m) for _, m in model.named_modules() if type(m).__name__ == "Qwen3_5GatedDeltaNet"
             and type(m).__module__.startswith("mlx_vlm.")}
    return {cls: type(f"PositionStates{cls.__name__}", (_KeepingVisionDeltaNet, cls), {}) for cls in found}


def scan_states(x: mx.array, B: mx.array, dt: mx.array, A_log: mx.array, state: mx.array | None,
                mask: mx.array | None) -> mx.array:
    """A Mamba-2 scan's state after each position (rows, S, heads, Dh, Ds), from the state before it:
    state_t = exp(a_t + ... + a_1) state_0 + sum over s <= t of exp(a_t + ... + a_s+1) dt_s x_s B_s^T,
    with a = dt A. ``x``: (rows, S, heads, Dh); ``B``: (rows, S, groups, Ds); ``dt``: (rows, S, heads),
    already through the mixer's softplus and limits; positions outside ``mask`` leave the state alone."""
    heads, groups = x.shape[2], B.shape[2]
    da = dt * -mx.exp(A_log).astype(dt.dtype)
    dx = dt[..., None] * x
    if mask is not None:
        da, dx = da * mask[..., None], dx * mask[..., None, None]
    total = mx.cumsum(da, axis=1)  # (rows, S, heads)
    steps = mx.arange(x.shape[1])
    decay = mx.where((steps[:, None] >= steps[None])[None, :, :, None],
                     mx.exp(total[:, :, None, :] - total[:, None, :, :]), 0)  # (rows, t, s, heads)
    states = mx.einsum("btsh,bshi,bshj->bthij", decay, dx, mx.repeat(B, heads // groups, axis=2))
    if state is not None:
        states = states + mx.exp(total)[..., None, None] * state[:, None].astype(states.dtype)
    return states


class _KeepingMamba:
    """A Mamba-2 mixer (mlx-lm's Nemotron-H and Falcon-H1) keeping each position's state in verify
    forwards: its convolution window is a view of what the step feeds it, and its scan's state after
    each position comes from :func:`scan_states`; the output is mlx-lm's."""

    def _conv(self, conv_input: mx.array, cache: Any, mask: mx.array | None) -> mx.array:
        if not _keeping(cache):
            return super()._conv(conv_input, cache, mask)
        return nn.silu(self.conv1d(_conv_window(cache, conv_input, mask, self.conv_kernel_size - 1)))

    def _ssm(self, hidden_states: mx.array, B: mx.array, C: mx.array, dt: mx.array, cache: Any,
             mask: mx.array | None) -> mx.array:
        if not _keeping(cache):
            return super()._ssm(hidden_states, B, C, dt, cache, mask)
        rows, steps, _ = hidden_states.shape
        before = cache[1]
        out = super()._ssm(hidden_states, B, C, dt, cache, mask)
        states = scan_states(hidden_states.reshape(rows, steps, self.num_heads, self.head_dim),
                             B.reshape(rows, steps, self.n_groups, self.ssm_state_size),
                             compute_dt(dt, self.dt_bias, self.time_step_limit), self.A_log, before, mask)
        cache.position_states.append(PositionState(1, states.astype(cache[1].dtype), 0, 1, True))  # after _conv's
        return out


class PositionStatesMamba2Mixer(_KeepingMamba, LengthAwareMamba2Mixer):
    """Nemotron-H's Mamba-2 mixer (its scan stopping at row lengths) keeping each position's state."""


class PositionStatesFalconH1Mixer(_KeepingMamba, FalconH1Mixer):
    """Falcon-H1's Mamba-2 mixer keeping each position's state."""


DELTA_NETS = {GatedDeltaNet: PositionStatesGatedDeltaNet, Qwen3NextGatedDeltaNet: PositionStatesQwen3NextGatedDeltaNet}
SHORT_CONVS = {ShortConv: PositionStatesShortConv, MoeShortConv: PositionStatesMoeShortConv}
MAMBAS = {NemotronHMamba2Mixer: PositionStatesMamba2Mixer, LengthAwareMamba2Mixer: PositionStatesMamba2Mixer,
          FalconH1Mixer: PositionStatesFalconH1Mixer}


def keep_position_states(model: Any) -> int:
    """Swap the model's recurrent layers for ones that keep each position's state in verify forwards
    (on Metal only the short convolutions: module docstring); returns how many were swapped."""
    if not isinstance(model, nn.Module):
        return 0
    loops = DELTA_NETS | _vision_delta_nets(model) | MAMBAS  # per-position loops: off Metal (module docstring)
    swaps = SHORT_CONVS if mx.metal.is_available() else loops | SHORT_CONVS
    swapped = 0
    for _, module in model.named_modules():
        swap = swaps.get(type(module))
        if swap is not None:
            module.__class__ = swap
            swapped += 1
    return swapped
