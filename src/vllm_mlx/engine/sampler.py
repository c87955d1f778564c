"""Batched sampling where every row keeps its own controls and its own random stream.

Per step and per row, in this order:

0. a grammar mask (constrained decoding) sets disallowed tokens to -inf;
1. ``logit_bias`` is added;
2. ``repetition_penalty`` (multiplicative, over prompt + generated tokens: positive logits are
   divided by it, negative ones multiplied);
3. ``presence_penalty`` / ``frequency_penalty`` (OpenAI semantics: subtract ``presence`` once for
   every token generated so far and ``frequency`` times its count, over generated tokens only);
4. ``min_tokens``: stop tokens are masked while a row has generated fewer tokens;
5. temperature scaling, then top-k, top-p and min-p truncation;
6. a Gumbel-max draw with the row's own PRNG key (argmax for temperature 0).

A seeded request therefore draws the same random numbers whether it runs alone
or in a batch. Logprobs are reported from the distribution after steps 1-5
without the truncation of step 5 (so every token has a finite logprob), at
temperature 1 for greedy rows.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import mlx.core as mx

from .request import MAX_TOP_LOGPROBS, SamplingParams

_NEG_INF = float("-inf")


def make_rng_key(seed: int | None) -> mx.array:
    """A request's PRNG key: from its seed, or from fresh entropy when it has none."""
    # any integer is a valid seed: negative and huge ones wrap to the key's 64 bits
    return mx.random.key(seed % 2**64 if seed is not None else secrets.randbits(63))


def split_row_keys(keys: mx.array) -> tuple[mx.array, mx.array]:
    """Each row's key (B, 2) split in two: (its next key, a subkey to draw with now)."""
    pairs = mx.vmap(mx.random.split)(keys)  # (B, 2, 2)
    return pairs[:, 0], pairs[:, 1]


def _gumbel_noise(keys: mx.array, vocab: int) -> mx.array:
    uniform = mx.vmap(lambda k: mx.random.uniform(shape=(vocab,), key=k))(keys)
    return -mx.log(-mx.log(mx.clip(uniform, 1e-20, 1.0 - 1e-7)))


def _column(values: list[float]) -> mx.array:
    return mx.array(values, dtype=mx.float32)[:, None]


def _dense_rows(rows: list, vocab: int, fill: float = 0.0) -> mx.array:
    """(B, vocab) float array from per-row sparse {token: value} items."""
    flat = mx.full((len(rows), vocab), fill, dtype=mx.float32)
    row_idx, tok_idx, vals = [], [], []
    for i, items in enumerate(rows):
        for tok, val in items:
            if 0 <= tok < vocab:
                row_idx.append(i)
                tok_idx.append(tok)
                vals.append(val)
    if row_idx:
        flat[mx.array(row_idx), mx.array(tok_idx)] = mx.array(vals, dtype=mx.float32)
    return flat


@dataclass
class BatchSamplingParams:
    """Per-row sampling controls of one batch, as arrays (None where no row uses a control)."""

    all_greedy: bool
    temperature: mx.array  # (B, 1); greedy rows hold 1.0
    greedy: mx.array  # (B,) bool
    top_p: mx.array | None = None  # (B, 1)
    top_k: mx.array | None = None  # (B,) int, 0 = off
    min_p: mx.array | None = None  # (B, 1)
    logit_bias: mx.array | None = None  # (B, vocab)
    presence: mx.array | None = None  # (B, 1)
    frequency: mx.array | None = None  # (B, 1)
    repetition: mx.array | None = None  # (B, 1)
    min_tokens: list[int] | None = None  # per row
    stop_mask: mx.array | None = None  # (B, vocab) bool: tokens held back until min_tokens
    top_logprobs: int = 0  # most alternatives any row asked for
    logprobs: bool = False  # some row reports logprobs
    uses_penalties: bool = False

    @property
    def argmax_only(self) -> bool:
        """Every row greedy, nothing to report or change in the logits: the token is the argmax."""
        return (self.all_greedy and not self.logprobs and not self.uses_penalties and self.logit_bias is None
                and self.min_tokens is None)

    def repeated(self, times: int) -> "BatchSamplingParams":
        """These rows' controls for ``times`` positions each (row-major), as the logits of a verify step
        flattened to rows; no reporting."""
        def rep(a):
            return None if a is None else mx.repeat(a, times, axis=0)

        return BatchSamplingParams(
            self.all_greedy, rep(self.temperature), rep(self.greedy), top_p=rep(self.top_p), top_k=rep(self.top_k),
            min_p=rep(self.min_p), logit_bias=rep(self.logit_bias), presence=rep(self.presence),
            frequency=rep(self.frequency), repetition=rep(self.repetition), uses_penalties=self.uses_penalties,
            min_tokens=None if self.min_tokens is None else [m for m in self.min_tokens for _ in range(times)],
            stop_mask=rep(self.stop_mask))

    @classmethod
    def from_params(
        cls, params: list[SamplingParams], vocab: int, stop_ids: list[set[int]] | None = None
    ) -> "BatchSamplingParams":
        greedy = [p.greedy for p in params]
        out = cls(
            all_greedy=all(greedy),
            temperature=_column([1.0 if g else p.temperature for g, p in zip(greedy, params)]),
            greedy=mx.array(greedy),
            top_logprobs=max(p.top_logprobs for p in params),
            logprobs=any(p.logprobs for p in params),
        )
        if any(p.top_p < 1.0 for p in params):
            out.top_p = _column([p.top_p for p in params])
        if any(p.top_k > 0 for p in params):
            out.top_k = mx.array([min(p.top_k, vocab) for p in params])  # top_k >= vocab: every token
        if any(p.min_p > 0 for p in params):
            out.min_p = _column([p.min_p for p in params])
        if any(p.logit_bias for p in params):
            out.logit_bias = _dense_rows([p.logit_bias for p in params], vocab)
        if any(p.uses_penalties for p in params):
            out.uses_penalties = True
            out.presence = _column([p.presence_penalty for p in params])
            out.frequency = _column([p.frequency_penalty for p in params])
            out.repetition = _column([p.repetition_penalty for p in params])
        if any(p.min_tokens > 0 for p in params) and stop_ids is not None:
            out.min_tokens = [p.min_tokens for p in params]
            out.stop_mask = _dense_rows([[(t, 1.0) for t in ids] for ids in stop_ids], vocab) > 0
        return out


@dataclass
class PenaltyState:
    """Per-row token statistics the penalties need: counts of generated tokens and the prompt's tokens."""

    counts: mx.array  # (B, vocab) float: how often each token was generated
    in_prompt: mx.array  # (B, vocab) bool

    @classmethod
    def for_prompts(cls, prompts: list[list[int]], vocab: int) -> "PenaltyState":
        marks = _dense_rows([[(t, 1.0) for t in set(p)] for p in prompts], vocab)
        return cls(counts=mx.zeros((len(prompts), vocab), dtype=mx.float32), in_prompt=marks > 0)

    def add_tokens(self, tokens: mx.array) -> None:
        rows = mx.arange(tokens.shape[0])
        self.counts = self.counts.at[rows, tokens].add(1.0)


def process_logits(
    logits: mx.array, params: BatchSamplingParams, penalties: PenaltyState | None, generated: list[int] | None
) -> mx.array:
    """Steps 1-4 of the module docstring. ``generated``: tokens each row has produced so far."""
    if params.logit_bias is not None:
        logits = logits + params.logit_bias
    if params.uses_penalties and penalties is not None:
        seen = penalties.in_prompt | (penalties.counts > 0)
        penalized = mx.where(logits > 0, logits / params.repetition, logits * params.repetition)
        logits = mx.where(seen, penalized, logits)
        logits = logits - params.presence * (penalties.counts > 0) - params.frequency * penalties.counts
    if params.min_tokens is not None and generated is not None:
        below = mx.array([g < m for g, m in zip(generated, params.min_tokens)])
        logits = mx.where(below[:, None] & params.stop_mask, _NEG_INF, logits)
    return logits


def process_positions(logits: mx.array, params: BatchSamplingParams, penalties: PenaltyState | None,
                      drafts: mx.array, generated: list[int] | None) -> mx.array:
    """Steps 1-4 (:func:`process_logits`) at every position of a verify step (B, K + 1, vocab): position j
    comes after the row's pending token and its first j proposals (``drafts`` (B, K)), so its penalty
    counts hold those (``penalties``: with the pending token already added) and ``generated[i] + j``
    tokens count toward ``min_tokens``."""
    b, width, vocab = logits.shape
    if params.uses_penalties and penalties is not None:
        before = mx.cumsum((drafts[..., None] == mx.arange(vocab)).astype(mx.float32), axis=1)  # (B, K, vocab)
        counts = penalties.counts[:, None] + mx.concatenate([mx.zeros((b, 1, vocab)), before], axis=1)
        penalties = PenaltyState(counts.reshape(b * width, vocab), mx.repeat(penalties.in_prompt, width, axis=0))
    if generated is not None:
        generated = [g + j for g in generated for j in range(width)]
    rows = logits.reshape(b * width, vocab).astype(mx.float32)
    return process_logits(rows, params.repeated(width), penalties, generated).reshape(b, width, vocab)


def _truncate(logits: mx.array, params: BatchSamplingParams) -> mx.array:
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


def draw_positions(logits: mx.array, params: BatchSamplingParams, keys: mx.array) -> tuple[mx.array, mx.array]:
    """Each row's token at every position of a verify step, from logits steps 0-4 were applied to
    (B, W, vocab), drawn as :func:`sample` draws a step's token: position j with the row's key after j
    splits, so a row draws the tokens a step at a time would. Returns (tokens (B, W), each row's key after
    each position's draw (B, W, 2))."""
    b, width, vocab = logits.shape
    logits = logits.astype(mx.float32)
    argmax = mx.argmax(logits, axis=-1)
    if params.all_greedy:
        return argmax, mx.broadcast_to(keys[:, None], (b, width, keys.shape[-1]))
    after, draw_keys = [], []
    for _ in range(width):
        keys, subkeys = split_row_keys(keys)
        after.append(keys)
        draw_keys.append(subkeys)
    each = params.repeated(width)  # row-major: a row's positions side by side
    scaled = logits.reshape(b * width, vocab) / each.temperature
    noise = _gumbel_noise(mx.stack(draw_keys, axis=1).reshape(b * width, -1), vocab)
    drawn = mx.argmax(_truncate(scaled, each) + noise, axis=-1).reshape(b, width)
    return mx.where(params.greedy[:, None], argmax, drawn), mx.stack(after, axis=1)


@dataclass
class SampleResult:
    tokens: mx.array  # (B,)
    keys: mx.array  # (B, 2): the rows' next keys
    logprobs: mx.array | None  # (B,) logprob of each sampled token (None: no row reports logprobs)
    top_ids: mx.array | None = None  # (B, k)
    top_logprobs: mx.array | None = None  # (B, k)

    def arrays(self) -> list[mx.array]:
        return [a for a in (self.tokens, self.keys, self.logprobs, self.top_ids, self.top_logprobs) if a is not None]


def sample(
    logits: mx.array,
    params: BatchSamplingParams,
    keys: mx.array,
    penalties: PenaltyState | None = None,
    generated: list[int] | None = None,
    allowed: mx.array | None = None,
) -> SampleResult:
    """Sample one token per row with per-row keys (B, 2); ``allowed``: (B, vocab) grammar masks."""
    if params.argmax_only and allowed is None:  # the common greedy case: one operation, no float32 copy
        return SampleResult(mx.argmax(logits, axis=-1), keys, None)
    logits = logits.astype(mx.float32)
    if allowed is not None:
        logits = mx.where(allowed, logits, _NEG_INF)
    logits = process_logits(logits, params, penalties, generated)
    scaled = logits / params.temperature
    argmax = mx.argmax(logits, axis=-1)
    if params.all_greedy:
        tokens = argmax
    else:
        keys, subkeys = split_row_keys(keys)
        drawn = mx.argmax(_truncate(scaled, params) + _gumbel_noise(subkeys, logits.shape[-1]), axis=-1)
        tokens = mx.where(params.greedy, argmax, drawn)
    if not params.logprobs:  # the normalizer is a pass over every row's vocabulary: only when reported
        return SampleResult(tokens, keys, None)
    return SampleResult(tokens, keys, *reported_logprobs(scaled, tokens, bool(params.top_logprobs)))


def reported_logprobs(scaled: mx.array, tokens: mx.array, top: bool) -> tuple[mx.array, ...]:
    """(logprob of each row's token, and when ``top`` the most likely ids and their logprobs) from the
    rows' scaled logits (B, vocab), as requests see them."""
    logprobs = scaled - mx.logsumexp(scaled, axis=-1, keepdims=True)
    chosen = mx.take_along_axis(logprobs, tokens[:, None], axis=-1)[:, 0]
    if not top:
        return chosen, None, None
    k = min(MAX_TOP_LOGPROBS, scaled.shape[-1])  # a fixed width: rows sampled in different steps share arrays
    top_ids = mx.argsort(-logprobs, axis=-1)[:, :k]
    return chosen, top_ids, mx.take_along_axis(logprobs, top_ids, axis=-1)
