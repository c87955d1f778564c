"""Batched sampling where every row keeps its own controls and its own random stream.

Rows are sampled with the Gumbel-max trick using a per-row PRNG key, so a
seeded request draws the same random numbers whether it runs alone or shares a
batch with others. Greedy rows (temperature 0) take the argmax.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import mlx.core as mx

from .request import SamplingParams

_NEG_INF = float("-inf")


def make_rng_key(seed: int | None) -> mx.array:
    """A request's PRNG key: from its seed, or from fresh entropy when it has none."""
    return mx.random.key(seed if seed is not None else secrets.randbits(63))


def _split_keys(keys: mx.array) -> tuple[mx.array, mx.array]:
    pairs = mx.vmap(mx.random.split)(keys)  # (B, 2, 2)
    return pairs[:, 0], pairs[:, 1]


def _gumbel_noise(keys: mx.array, vocab: int) -> mx.array:
    uniform = mx.vmap(lambda k: mx.random.uniform(shape=(vocab,), key=k))(keys)
    return -mx.log(-mx.log(mx.clip(uniform, 1e-20, 1.0 - 1e-7)))


@dataclass
class BatchSamplingParams:
    """Per-row sampling controls of one decode batch, as arrays."""

    all_greedy: bool
    temperature: mx.array  # (B, 1); greedy rows hold 1.0 (unused)
    greedy: mx.array  # (B,) bool
    top_p: mx.array | None  # (B, 1) or None when no row uses it
    top_k: mx.array | None  # (B,) int, 0 = off
    min_p: mx.array | None  # (B, 1)

    @classmethod
    def from_params(cls, params: list[SamplingParams]) -> "BatchSamplingParams":
        greedy = [p.greedy for p in params]
        return cls(
            all_greedy=all(greedy),
            temperature=mx.array([[1.0 if g else p.temperature] for g, p in zip(greedy, params)]),
            greedy=mx.array(greedy),
            top_p=mx.array([[p.top_p] for p in params]) if any(p.top_p < 1.0 for p in params) else None,
            top_k=mx.array([p.top_k for p in params]) if any(p.top_k > 0 for p in params) else None,
            min_p=mx.array([[p.min_p] for p in params]) if any(p.min_p > 0 for p in params) else None,
        )


def _filter_logits(logits: mx.array, params: BatchSamplingParams) -> mx.array:
    """Mask tokens outside top-k / top-p / min-p, per row."""
    if params.top_k is None and params.top_p is None and params.min_p is None:
        return logits
    sorted_desc = -mx.sort(-logits, axis=-1)
    vocab = logits.shape[-1]
    if params.top_k is not None:
        k = mx.where(params.top_k > 0, mx.minimum(params.top_k, vocab), vocab)
        kth = mx.take_along_axis(sorted_desc, (k - 1)[:, None], axis=-1)
        logits = mx.where(logits < kth, _NEG_INF, logits)
        sorted_desc = mx.where(mx.arange(vocab)[None] < k[:, None], sorted_desc, _NEG_INF)
    if params.top_p is not None:
        probs = mx.softmax(sorted_desc, axis=-1)
        # A sorted token is kept while the mass before it is below top_p.
        mass_before = mx.cumsum(probs, axis=-1) - probs
        kept = mass_before < params.top_p
        threshold = mx.min(mx.where(kept, sorted_desc, float("inf")), axis=-1, keepdims=True)
        logits = mx.where(logits < threshold, _NEG_INF, logits)
    if params.min_p is not None:
        top = sorted_desc[:, :1]
        logits = mx.where(logits < top + mx.log(params.min_p), _NEG_INF, logits)
    return logits


def sample(logits: mx.array, params: BatchSamplingParams, keys: mx.array) -> tuple[mx.array, mx.array]:
    """Sample one token per row with per-row keys (B, 2). Returns (tokens (B,), the rows' next keys)."""
    logits = logits.astype(mx.float32)
    argmax = mx.argmax(logits, axis=-1)
    if params.all_greedy:
        return argmax, keys
    keys, subkeys = _split_keys(keys)
    scaled = _filter_logits(logits / params.temperature, params)
    sampled = mx.argmax(scaled + _gumbel_noise(subkeys, logits.shape[-1]), axis=-1)
    return mx.where(params.greedy, argmax, sampled), keys
