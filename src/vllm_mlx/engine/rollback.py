"""Rejected proposals in models with recurrent layers (Qwen3.5/3.6 and Qwen3-Next gated delta nets,
Nemotron-H's Mamba, LFM2's short convolutions): their state cannot drop positions the way a KV cache
does, so a verify step keeps a snapshot of it (the state arrays before the step; MLX arrays are
immutable, so this is references, not a copy) and repairs the batch afterwards.

When every row kept all it was fed, the state after the step is right and nothing happens. Otherwise
the recurrent layers go back to the snapshot, the attention layers drop the step's positions, and the
model is run again over the step's inputs with each row's length set to what it kept (mlx-lm's
recurrent layers stop updating a row past ``cache.lengths``, as they do for right-padded prompts); the
attention layers then drop the positions past each row's length. A second forward, but only of the
accepted width (the most any row kept), and only after a rejection.

Layers that keep the state after each position of a verify forward need neither: Gated DeltaNets and
Mamba mixers off Metal, LFM2's short convolutions (:mod:`~vllm_mlx.models.position_states`), the MTP
head's newest hidden state. :func:`take_kept` gives
each row the state after its last kept position within the step's own graph, and the next step only
cuts the attention layers (:func:`drop_rejected`). Where any recurrent layer keeps no such states, the
step takes the snapshot instead.

Rows that joined the batch after the verify step was launched were not part of it: their state is
left alone (length 0) and their attention positions are not touched.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
from mlx_lm.models.cache import BatchRotatingKVCache, make_prompt_cache

from .cache_layout import leaf_caches
from .model_runner import drop_row_tails, in_temporal_order, recurrent_layers
from .rows import RowArrays

STATE = "rollback_state"  # row-array names: the snapshot, STATE_i_j (recurrent layer i, state array j)


def attention_leaves(caches: list[Any], layers: list[int]) -> list[Any]:
    """The leaf caches of ``caches`` that are not the recurrent ``layers`` (the ones positions are cut off)."""
    recurrent = set(layers)
    return [c for i, c in enumerate(leaf_caches(caches)) if i not in recurrent]


def forward_right_padded(model: Any, caches: list[Any], layers: list[int], tokens: mx.array,
                         lengths: list[int]) -> mx.array:
    """Run ``tokens`` (B, W), right-padded, through ``model``: the recurrent ``layers`` stop at each row's
    length (mlx-lm's ``cache.lengths``), and the padding is cut off the other layers' caches after. With
    sliding-window layers the forward is a multi-token one, their ring put in temporal order first (a
    ring's one-token step writes in place, which leaves no way to cut a row's padding off)."""
    leaves = leaf_caches(caches)
    if any(isinstance(c, BatchRotatingKVCache) for c in leaves):
        if tokens.shape[1] == 1 and min(lengths) == 0:
            tokens = mx.pad(tokens, [(0, 0), (0, 1)])
        if tokens.shape[1] > 1:
            in_temporal_order(leaves)
    for i in layers:
        leaves[i].lengths = mx.array(lengths)  # one per layer: each layer's ``advance`` subtracts in place
    out = model(tokens, cache=caches)
    for i in layers:
        leaves[i].lengths = None
    drop_row_tails(attention_leaves(caches, layers), [tokens.shape[1] - n for n in lengths])
    return out


def honours_lengths(model: Any) -> bool:
    """Whether the model's recurrent layers stop at ``cache.lengths``: three tokens with length 1 must
    leave the state one token leaves (checked once at start, on the model itself)."""
    tokens = mx.array([[1, 2, 3]])
    one, masked, three = (make_prompt_cache(model) for _ in range(3))
    model(tokens[:, :1], cache=one)
    layers = recurrent_layers(masked)
    leaves = leaf_caches(masked)
    for i in layers:
        leaves[i].lengths = mx.array([1])
    model(tokens, cache=masked)
    model(tokens, cache=three)
    one, masked, three = (leaf_caches(c) for c in (one, masked, three))
    for i in layers:
        for a, b, c in zip(one[i].cache, masked[i].cache, three[i].cache):
            if a is None:
                continue
            a, b, c = (x.astype(mx.float32) for x in (a, b, c))
            if mx.abs(b - a).max().item() > 0.1 * mx.abs(c - a).max().item() + 1e-6:
                return False
    return True


def recurrent_states(caches: list[Any], layers: list[int]) -> list[list[Any]]:
    """The state arrays of the recurrent ``layers`` (indices into ``leaf_caches(caches)``) as they are now:
    references, not copies (a step replaces them, it does not write into them)."""
    leaves = leaf_caches(caches)
    return [list(leaves[i].cache) for i in layers]


def restore_states(caches: list[Any], layers: list[int], states: list[list[Any]]) -> None:
    """Put back what :func:`recurrent_states` kept."""
    leaves = leaf_caches(caches)
    for i, kept in zip(layers, states):
        leaves[i].cache = kept


def ring_states(caches: list[Any], layers: list[int]) -> list[tuple]:
    """The whole state of the sliding-window ``layers`` (indices into ``leaf_caches(caches)``): a one-token
    step writes into the ring (and its left padding) in place, so the arrays are copied (lazily)."""
    leaves = leaf_caches(caches)
    return [tuple(mx.array(x) if isinstance(x, mx.array) else x for x in leaves[i].state) for i in layers]


def restore_rings(caches: list[Any], layers: list[int], states: list[tuple]) -> None:
    """Put back what :func:`ring_states` kept."""
    leaves = leaf_caches(caches)
    for i, kept in zip(layers, states):
        leaves[i].state = kept


def drop_rejected(runner: Any, junk: list[int]) -> bool:
    """After a verify step of ``runner``'s decode batch: each row drops its last ``junk[r]`` positions --
    cut off attention caches, and with recurrent layers, rolled back by :func:`repair` (unless the step
    already took each row's kept state: :func:`take_kept`). Returns whether that ran a second forward."""
    if runner.recurrent and runner.rows["verify_inputs"] is not None:
        return repair(runner.batch_model, runner.batch_cache, runner.recurrent, runner.rows, junk)
    drop_row_tails(attention_leaves(runner.batch_cache, runner.recurrent), junk)
    return False


def keep_positions(caches: list[Any], layers: list[int], keep: bool) -> None:
    """Ask the recurrent ``layers`` to keep the state after each position of the next forward (a verify
    step's), or stop asking."""
    leaves = leaf_caches(caches)
    for i in layers:
        leaves[i].keep_positions = keep


def take_kept(caches: list[Any], layers: list[int], kept: mx.array) -> bool:
    """After a verify forward run with :func:`keep_positions`: set each recurrent layer's state to the
    one after each row's last kept position (``kept``: (rows,) positions kept, lazy). False, changing
    nothing, when some layer kept no per-position states (then the step needs a :func:`snapshot`)."""
    every = leaf_caches(caches)
    leaves = [every[i] for i in layers]
    found = [getattr(c, "position_states", None) for c in leaves]
    for c in leaves:
        c.position_states = None
    if not all(found):
        return False
    positions: dict = {}  # gather indices, shared by the layers' entries of one shape
    for cache, states in zip(leaves, found):
        for state in states:
            cache[state.index] = state.after(kept, positions)
    return True


def snapshot(rows: RowArrays, states: list[list[Any]], layers: list[int], inputs: mx.array) -> None:
    """With a verify step: keep the recurrent layers' ``states`` from before it, the step's inputs, and
    which rows take part."""
    for i, layer in zip(layers, states):
        for j, state in enumerate(layer):
            rows[f"{STATE}_{i}_{j}"] = state
    rows["verify_inputs"], rows["verified"] = inputs, mx.ones((inputs.shape[0],), dtype=mx.bool_)


def repair(model: Any, caches: list[Any], layers: list[int], rows: RowArrays, junk: list[int]) -> bool:
    """After a verify step: leave each verified row with the state of the positions it kept
    (``junk[r]``: positions at the end of row r to drop); returns whether that took a second forward."""
    if max(junk) == 0:
        return False  # every verified row kept all it was fed (rows that joined since have nothing to drop)
    verified = rows["verified"].tolist()
    width = rows["verify_inputs"].shape[1]
    keep = [width - j if v else 0 for j, v in zip(junk, verified)]
    chosen = rows["verified"]
    leaves = leaf_caches(caches)
    for i in layers:
        cache = leaves[i]
        for j, state in enumerate(cache.cache):
            saved = rows[f"{STATE}_{i}_{j}"]
            if state is not None and saved is not None:
                cache.cache[j] = mx.where(chosen.reshape(-1, *[1] * (state.ndim - 1)), saved, state)
    drop_row_tails(attention_leaves(caches, layers), [width if v else 0 for v in verified])
    # the step's inputs again, up to the most any row kept (only the caches are read: lazily)
    forward_right_padded(model, caches, layers, rows["verify_inputs"][:, :max(keep)], keep)
    return True
