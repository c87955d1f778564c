"""Multi-token prediction as the drafter (``--speculative mtp``): the checkpoint's MTP head
(:mod:`.mtp_head`) proposes the next tokens from the served model's final hidden states, attending
along the whole sequence as it was trained to.

**The head's cache.** The head's layer keeps keys and values of its own, one per position of the
sequence: position ``i`` holds the pair (the served model's hidden state at ``i - 1``, the token at
``i``). So the model's cache gets two more entries after its layers' (:meth:`HeadFeed.make_cache`):
a ``KVCache`` for the head's layer and an ``ArraysCache`` holding the hidden state of each row's
newest position (the pair that straddles two forwards). Every forward of the served model -- prefill
chunks, media prefill, decode, verify, the rollback's re-run -- feeds them (:class:`HeadFeed`): its
hidden states shifted one position right behind that newest one, with its own tokens, through the
head's projections and its layer's key and value projections only (:meth:`MTPHead.write_keys`).
One-token steps of the decode batch write theirs together, later (:class:`HeadFeed`).

Being entries of the model's cache, they follow the rows through everything the engine does with a
cache: batches merge and filter them, rejected positions are cut off them (the newest hidden state is
a recurrent state, rolled back and re-run with the model's own), and the prefix cache (its disk tier
too) stores and restores them with the model's keys, values and state checkpoints, so a restored
prefix drafts as well as a computed one.

Position 0 has no hidden state before it; its entry (made from a zero hidden state) is masked out of
the head's attention, so the head sees exactly the pairs it was trained on, at the same relative
positions.

**Drafting** (:class:`MTPProposer`): the head takes the pair of each row's newest position (the
hidden state its newest token was drawn from, the token) and proposes a token; its own output hidden
state and that token make the next pair, K times. Proposals come before the previous verify step's
rejected positions are cut off (a distributed rank 0 sends them first), so those positions are
masked out and the proposals' positions are moved back over them; the proposals' keys and values are
trimmed again after.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
from mlx_lm.models.cache import ArraysCache, BatchKVCache, KVCache, make_prompt_cache

from ..models.cpu_decode import swap_cpu_decode_modules
from ..models.position_states import PositionState
from .mtp_head import MTPHead, language_model, load_mtp_head, output_head, served_output
from .sequence import Sequence

CACHE_ENTRIES = 2  # after the model's layers: the head's keys and values, each row's newest hidden state
DEFERRED_STEPS = 15  # one-token steps of the decode batch whose pairs are written together (with the
# step that ends a run: 16 positions, as many as the CPU backend's compiled RoPE takes)


def visible_positions(cache: BatchKVCache, width: int, rejected: mx.array) -> mx.array:
    """Which of the first ``width`` positions of the decode batch's head cache a proposal may attend to
    (rows, 1, 1, width): not a row's left padding nor its position 0 (no pair there), nor the last
    ``rejected[r]`` positions before the proposals (a verify step's, not cut off yet); a step's
    proposal takes the first ones, up to its own."""
    columns, end = mx.arange(width), cache._idx
    first = cache.left_padding[:, None]
    visible = (columns > first) & ((columns < end - rejected[:, None]) | (columns >= end))
    if getattr(cache, "holes", None) is not None:  # positions dropped in place (decode_cache.py)
        visible = visible & ~cache.hole_mask(width)
    return visible[:, None, None]


def newest_hidden(hidden: mx.array, before: mx.array, lengths: mx.array | None) -> mx.array:
    """Each row's hidden state at its newest position: the forward's last, or with ``lengths`` (a
    right-padded re-run) the one at the row's length (``before`` for rows of length 0)."""
    if lengths is None:
        return hidden[:, -1:]
    at = mx.maximum(lengths - 1, 0)[:, None, None]
    return mx.where(lengths[:, None, None] > 0, mx.take_along_axis(hidden, at, axis=1), before)


class HeadFeed:
    """Feeds the MTP head's entries of the cache from the served model's forwards (module docstring).

    A one-token step of the decode batch (a batch cache) only updates the newest hidden state and
    keeps its pair: the pairs of up to :data:`DEFERRED_STEPS` such steps are written in one go, when
    the head drafts or the batch changes (:meth:`settle`), so a run of plain steps costs a few
    operations per step, not the head's projections each (what a step costs on a host-bound backend).
    Any other forward writes its pairs at once, after those kept for its cache."""

    def __init__(self, head: MTPHead, embed: Any):
        self.head = head
        self.embed = embed
        self.written: list[mx.array] = []  # the keys and values last written (nothing else reads them)
        self._kept: list[tuple[mx.array, mx.array]] = []  # (hidden states, tokens) of deferred steps
        self._kept_for: Any = None  # the keys cache they belong to

    @staticmethod
    def make_cache() -> list[Any]:
        return [KVCache(), ArraysCache(1)]

    def __call__(self, hidden: mx.array, tokens: mx.array, caches: list[Any]) -> None:
        """Feed the pairs of a forward's positions: ``hidden`` (rows, L, H) its final hidden states,
        ``tokens`` (rows, L) its inputs, ``caches`` the head's two entries."""
        keys, newest = caches
        before = newest.cache[0]
        if before is None:
            before = mx.zeros_like(hidden[:, :1])
        shifted = mx.concatenate([before, hidden[:, :-1]], axis=1) if hidden.shape[1] > 1 else before
        newest.cache[0] = newest_hidden(hidden, before, newest.lengths)
        if getattr(newest, "keep_positions", False):  # a verify step: the state after each position
            newest.position_states = [PositionState(0, hidden, 0, 1)]
        one_step = tokens.shape[1] == 1 and newest.lengths is None and isinstance(keys, BatchKVCache)
        if one_step and keys is not self._kept_for:
            self.settle()  # (a new decode batch: the rows were settled when the last one changed)
        if one_step and len(self._kept) < DEFERRED_STEPS:
            self._kept.append((shifted, tokens))
            self._kept_for = keys
            return
        if self._kept and keys is self._kept_for:  # those deferred for this cache first
            shifted, tokens = (mx.concatenate(parts, axis=1) for parts in zip(*self._kept, (shifted, tokens)))
            self._kept = []
        self._write(shifted, tokens, keys)

    def settle(self) -> None:
        """Write the deferred steps' pairs (before the head drafts, or the decode batch changes)."""
        if self._kept:
            shifted, tokens = (mx.concatenate(parts, axis=1) for parts in zip(*self._kept))
            self._kept = []
            self._write(shifted, tokens, self._kept_for)
        self._kept_for = None

    def _write(self, shifted: mx.array, tokens: mx.array, keys: Any) -> None:
        self.head.write_keys(shifted, self.embed(tokens), keys)
        self.written = [keys.keys, keys.values]


class TextModelWithHead:
    """A text model served with its MTP head: its cache ends with the head's entries, and every
    forward feeds them; everything else is the model's."""

    def __init__(self, model: Any, feed: HeadFeed):
        self.model = model
        self.head_feed = feed
        self._body = language_model(model).model
        self.output = served_output(model)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["model"], name)

    def make_cache(self) -> list[Any]:
        return make_prompt_cache(self.model) + self.head_feed.make_cache()

    def hidden(self, tokens: mx.array, cache: list[Any], **kwargs: Any) -> mx.array:
        """The final hidden states (what :attr:`output` turns into logits), the head's entries fed."""
        hidden = self._body(tokens, cache=cache[:-CACHE_ENTRIES], **kwargs)
        self.head_feed(hidden, tokens, cache[-CACHE_ENTRIES:])
        return hidden

    def __call__(self, tokens: mx.array, cache: list[Any] | None = None, **kwargs: Any) -> mx.array:
        return self.output(self.hidden(tokens, self.make_cache() if cache is None else cache, **kwargs))


def serve_with_head(loaded: Any) -> Any:
    """The model to serve with ``--speculative mtp``: ``loaded.model`` with its checkpoint's MTP head
    fed by every forward (a vision-language model feeds it itself); a ValueError when it cannot."""
    if getattr(loaded, "parallelism", None) == "pipeline":
        raise ValueError("--speculative mtp cannot run with pipeline parallelism (the last rank holds the "
                         "final hidden states); tensor parallelism can")
    model = loaded.model
    head = load_mtp_head(model, loaded.path, loaded.config)
    swap_cpu_decode_modules(head)  # as the model's own modules (on MLX's CPU backend)
    feed = HeadFeed(head, language_model(model).model.embed_tokens)
    if hasattr(model, "vlm"):
        model.head_feed = feed
        return model
    return TextModelWithHead(model, feed)


class MTPProposer:
    """Proposals of the checkpoint's MTP head for the rows of the decode batch. ``model``: the served
    model with its head fed (:func:`serve_with_head`); ``whole_output``: the output head unsplit,
    where ``--distributed`` split the model's (the head runs on rank 0 alone, so it cannot gather the
    other ranks' parts)."""

    method = "mtp"

    def __init__(self, model: Any, runner: Any, vocab_limit: int, whole_output: Any = None):
        self.feed: HeadFeed = model.head_feed
        self.output = whole_output if whole_output is not None else output_head(model)
        self.runner = runner
        self.vocab_limit = vocab_limit
        # decode and verify forwards keep their hidden states; the runner settles the head's deferred
        # pairs when the batch changes and evaluates what it writes with each step
        runner.capture(model.hidden, model.output, self.feed)

    def may_propose(self, seqs: list[Sequence], wants: list[int]) -> bool:
        return any(wants)

    def forget(self, seqs: list[Sequence]) -> None:
        pass

    def propose(self, seqs: list[Sequence], wants: list[int]) -> list[list[int]]:
        """Up to ``wants[i]`` tokens for row i (rows of the decode batch), after its newest token."""
        runner = self.runner
        batch = {s: i for i, s in enumerate(runner.batch_seqs)}
        rows = [i for i, (s, w) in enumerate(zip(seqs, wants)) if w and s in batch]
        out: list[list[int]] = [[] for _ in seqs]
        if not rows or runner.batch_cache is None:
            return out
        self.feed.settle()
        keys, newest = runner.batch_cache[-CACHE_ENTRIES:]
        where = [batch[seqs[i]] for i in rows]
        picked = None if where == list(range(len(batch))) else mx.array(where)  # (None: every row, in order)
        hidden = self._newest_hidden(newest.cache[0])
        token = mx.array([s.output_ids[-1] for s in runner.batch_seqs], dtype=mx.int32)
        junk = runner.rows["junk"]  # positions of the last verify step not cut off yet
        junk = mx.zeros(len(batch), dtype=mx.int32) if junk is None else junk.astype(mx.int32)
        k, start, drafts = max(wants[i] for i in rows), keys._idx, []
        visible = visible_positions(keys, start + k, junk)
        keys.offset = keys.offset - junk  # the proposals' positions follow each row's kept ones
        for j in range(k):
            hidden = self.feed.head(hidden, self.feed.embed(token[:, None]), keys, visible[..., :start + j + 1])
            out_hidden = hidden if picked is None else hidden[picked]
            best = mx.argmax(self.output(out_hidden)[:, -1, :self.vocab_limit], axis=-1).astype(mx.int32)
            if picked is None:
                token = best
            else:
                token = mx.zeros_like(token)
                token[picked] = best
            drafts.append(best)
        keys.trim(k)
        keys.offset = keys.offset + junk
        for i, row in zip(rows, mx.stack(drafts, axis=1).tolist()):
            out[i] = row[:wants[i]]
        return out

    def _newest_hidden(self, kept: mx.array) -> mx.array:
        """Each batch row's hidden state at its newest position (rows, 1, H): where the last decode or
        verify forward drew the row's newest token (a verify step's rejected positions are not cut off
        yet), or for rows that joined since, the one their cache keeps."""
        runner = self.runner
        if runner.last_hidden is None or runner.hidden_index is None:
            return kept  # after a decode step, what the cache keeps is where each row drew its token
        at = runner.hidden_index[:, None, None].astype(mx.int32)
        drawn = mx.take_along_axis(runner.last_hidden, at, axis=1)  # the verify step's rows
        if runner.hidden_seqs == runner.batch_seqs:
            return drawn
        last = {s: i for i, s in enumerate(runner.hidden_seqs)}
        drawn = drawn[mx.array([last.get(s, 0) for s in runner.batch_seqs])]
        return mx.where(mx.array([s in last for s in runner.batch_seqs])[:, None, None], drawn, kept)
