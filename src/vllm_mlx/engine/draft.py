"""Draft-model proposals (``--draft-model MODEL``): a smaller model with the same vocabulary proposes each
row's next tokens, greedily, in a batch of its own that follows the engine's decode batch.

The draft keeps one batch KV cache for the rows it has seen. A row joins it in the verify steps after it
joins the decode batch: its latest ``DRAFT_CONTEXT`` tokens are prefilled into a cache of its own,
``INGEST_TOKENS`` a step at most (a long prompt does not stall the batch; meanwhile the row proposes
nothing), then merged. Each verify step first feeds every row the tokens it has not seen (the proposals
the target accepted and its own token after them), right-padded to the longest; the padding becomes
holes in the row's cache (:class:`~.decode_cache.DecodeKVCache`, as in the decode batch) rather than
moving the row's whole cache right, a copy of its context at every step. Then K - 1 one-token steps
propose, and their positions -- the same newest columns in every row -- are trimmed, so the draft
holds only tokens the target emitted. Recurrent layers (a small Qwen3.5 drafting for a large one) go
back to their state after the feed, and stop at each row's length where rows are right-padded;
sliding-window layers (Gemma 3/4, gpt-oss) go back to their ring after the feed: the one-token steps
write over the ring's oldest positions, which trimming cannot return.
Which rows propose, and how many tokens, is the speculator's choice (:mod:`.speculative`); the target's
verification makes the output the target's whatever the draft proposes.
"""

from __future__ import annotations

import logging
from typing import Any

import mlx.core as mx
from mlx_lm.models.cache import RotatingKVCache, make_prompt_cache

from .decode_cache import as_decode_caches
from .cache_layout import leaf_caches
from .model_runner import recurrent_layers
from .rollback import forward_right_padded, recurrent_states, restore_rings, restore_states, ring_states
from .sequence import Sequence

logger = logging.getLogger(__name__)

DRAFT_CONTEXT = 8192  # a row's newest tokens the draft is prefilled with when the row joins
INGEST_TOKENS = 1024  # tokens of joining rows the draft prefills per verify step
CHUNK = 256  # widest forward of the draft over tokens it only has to remember
LAST_WIDTH = 8  # widest forward whose logits are read (the step's first proposals)


def check_vocabulary(target_tokenizer: Any, draft_tokenizer: Any, name: str) -> None:
    """The draft must map every token id to the same token as the served model."""
    target, draft = target_tokenizer.get_vocab(), draft_tokenizer.get_vocab()
    if target != draft:
        differing = sorted(set(target.items()) ^ set(draft.items()), key=lambda item: item[1])[:3]
        raise ValueError(f"--draft-model {name} has another vocabulary than the served model ({len(draft)} vs "
                         f"{len(target)} tokens; e.g. {', '.join(f'{t!r}={i}' for t, i in differing)}): a draft "
                         "model must share the served model's tokenizer")


def load_draft(path: str, served: Any, vocab_width: int, served_prefix: Any = None) -> "DraftProposer":
    """Load ``--draft-model`` (on the engine thread) in the served model's compute dtype and check its
    vocabulary (``served``: the served model as loaded; ``vocab_width``: its logits' width). With the
    served model's prefix cache (``served_prefix``), the draft gets one of its own, in memory, its
    budget the served model's scaled by their weights (no forward of the served model here: across
    ranks one on rank 0 alone would run collectives the other ranks do not)."""
    from ..models.cpu_decode import swap_cpu_decode_modules
    from ..models.loader import load_model, weight_bytes
    from ..models.row_lengths import honour_row_lengths
    from .model_runner import probe_vocab_size
    from .prefix_cache import PrefixCache, model_fingerprint

    dtype = getattr(getattr(served, "backend", None), "compute_dtype", None) or "model"
    draft = load_model(path, compute_dtype=dtype)
    check_vocabulary(served.tokenizer, draft.tokenizer, path)
    honour_row_lengths(draft.model)
    swap_cpu_decode_modules(draft.model)
    prefix = None
    if served_prefix is not None:
        ratio = weight_bytes(draft.model) / max(1, weight_bytes(served.model))
        prefix = PrefixCache(make_prompt_cache(draft.model), int(served_prefix.stats.budget_bytes * min(ratio, 1.0)),
                             model_fingerprint(draft) + "draft", served_prefix.block_size, served_prefix.kv_bits)
    return DraftProposer(draft.model, min(vocab_width, probe_vocab_size(draft.model)), prefix)


class _Joining:
    __slots__ = ("cache", "next", "end")

    def __init__(self, cache: list[Any], start: int, end: int):
        self.cache, self.next, self.end = cache, start, end  # feed positions [next, end) of the row's tokens


def _tokens(seq: Sequence, start: int, end: int) -> list[int]:
    """Positions [start, end) of the row's prompt followed by its output."""
    p = len(seq.prompt_ids)
    if end <= p:
        return seq.prompt_ids[start:end]
    if start >= p:
        return seq.output_ids[start - p:end - p]
    return seq.prompt_ids[start:] + seq.output_ids[:end - p]


class DraftProposer:
    """Greedy proposals of a draft model, batched; see the module's text."""

    method = "draft"

    def __init__(self, model: Any, vocab_limit: int, prefix: Any = None):
        self.model = model  # (its output head is computed only where its logits are read: MLX is lazy)
        leaves = leaf_caches(make_prompt_cache(model))
        self.recurrent = recurrent_layers(leaves)  # layers whose state cannot drop positions
        self.rings = [i for i, c in enumerate(leaves) if isinstance(c, RotatingKVCache)]  # sliding windows
        self.vocab_limit = vocab_limit  # token ids the served model has
        self.cache: list[Any] | None = None  # the draft's batch cache, rows in the order of ``seqs``
        self.seqs: list[Sequence] = []
        self.seen: dict[Sequence, int] = {}  # tokens of each row in the draft's cache (absolute position)
        self.joining: dict[Sequence, _Joining] = {}
        self.prompt_work = False  # the last proposals prefilled joining rows (the step is not a steady one)
        self.prefix = prefix  # the draft's own prefix cache (a PrefixCache of its layout), or None
        self.whole: set[Sequence] = set()  # rows whose draft cache starts at position 0 (cacheable)
        self.cached_tokens = 0  # tokens the draft took from its prefix cache instead of prefilling them

    def may_propose(self, seqs: list[Sequence], wants: list[int]) -> bool:
        return any(wants)

    def forget(self, seqs: list[Sequence]) -> None:
        gone = set(seqs)
        for i, seq in enumerate(self.seqs):  # the next turn of a conversation starts from what its draft held
            if seq in gone and seq in self.whole and self.prefix is not None:
                self._remember(seq, [c.extract(i) for c in self.cache], self.seen[seq])
        for seq in seqs:
            self.joining.pop(seq, None)
            self.seen.pop(seq, None)
            self.whole.discard(seq)
        keep = [i for i, s in enumerate(self.seqs) if s not in gone]
        if len(keep) == len(self.seqs):
            return
        self.seqs = [self.seqs[i] for i in keep]
        if not keep:
            self.cache = None
            return
        indices = mx.array(keep)
        for c in self.cache:
            c.filter(indices)

    def propose(self, seqs: list[Sequence], wants: list[int]) -> list[list[int]]:
        """Up to ``wants[i]`` tokens for row i (none where it is 0, or while its draft is being prefilled)."""
        self._join(seqs)
        wanted = {s: w for s, w in zip(seqs, wants) if w and s in self.seen}
        k = max(wanted.values(), default=0)
        if k == 0:
            return [[] for _ in seqs]
        drafted = self._draft(k)
        return [drafted[s][:w] if s in wanted else [] for s, w in zip(seqs, wants)]

    def _join(self, seqs: list[Sequence]) -> None:
        """Prefill the draft with the context of rows new to it, ``INGEST_TOKENS`` at most; rows done join
        the draft's batch."""
        budget, ready = INGEST_TOKENS, []
        self.prompt_work = False
        for seq in seqs:
            if seq in self.seen:
                continue
            joining = self.joining.get(seq)
            if joining is None:
                joining = self.joining[seq] = self._start(seq)
            while budget > 0 and joining.next < joining.end:
                n = min(budget, CHUNK, joining.end - joining.next)
                self.model(mx.array(_tokens(seq, joining.next, joining.next + n))[None], cache=joining.cache)
                mx.eval([c.state for c in joining.cache])
                joining.next, budget, self.prompt_work = joining.next + n, budget - n, True
            if joining.next >= joining.end:
                ready.append(seq)
                if seq in self.whole and self.prefix is not None:  # (rows sharing the prompt: n > 1, resends)
                    self._remember(seq, joining.cache, joining.end)
            if budget <= 0:
                break
        if not ready:
            return
        merged = [layer[0].merge(list(layer)) for layer in zip(*(self.joining[s].cache for s in ready))]
        if self.cache is None:
            self.cache = as_decode_caches(merged)  # a row's padding and rejected tail become holes, not moves
        else:
            for running, new in zip(self.cache, merged):
                running.extend(new)
        for seq in ready:
            self.seen[seq] = self.joining.pop(seq).end
            self.seqs.append(seq)

    def _start(self, seq: Sequence) -> _Joining:
        """Where a row's draft starts: the longest prefix of its tokens the draft's prefix cache holds,
        or its latest ``DRAFT_CONTEXT`` tokens."""
        end = len(seq.prompt_ids) + len(seq.output_ids) - 1  # its newest token comes with the step
        start = max(0, end - DRAFT_CONTEXT)
        if self.prefix is not None:
            try:
                hit = self.prefix.lookup(_tokens(seq, 0, end + 1))  # (a hit leaves the newest token out)
            except Exception:  # reuse is an optimisation: the row is prefilled as without it
                logger.warning("draft prefix-cache lookup failed", exc_info=True)
                hit = None
            if hit is not None and hit.num_tokens > start:
                self.whole.add(seq)
                self.cached_tokens += hit.num_tokens
                return _Joining(hit.cache, hit.num_tokens, end)
        if start == 0:
            self.whole.add(seq)
        return _Joining(make_prompt_cache(self.model), start, end)

    def _remember(self, seq: Sequence, cache: list[Any], length: int) -> None:
        try:
            self.prefix.insert(_tokens(seq, 0, length), cache)
        except Exception:  # caching is an optimisation: never fail a request over it
            logger.warning("draft prefix-cache insert failed", exc_info=True)

    def _draft(self, k: int) -> dict[Sequence, list[int]]:
        """``k`` greedy tokens for every row of the draft's batch that has tokens it has not seen (none for
        a row without), fed first."""
        ends = [len(s.prompt_ids) + len(s.output_ids) for s in self.seqs]
        unseen = [_tokens(s, self.seen[s], end) for s, end in zip(self.seqs, ends)]  # what came since
        fresh = [bool(u) for u in unseen]
        if not any(fresh):
            return {s: [] for s in self.seqs}
        while max(len(u) for u in unseen) > LAST_WIDTH:  # a long lag (pipelined steps): remember it first
            fed = [u[:min(CHUNK, len(u) - LAST_WIDTH)] if len(u) > LAST_WIDTH else [] for u in unseen]
            self._feed(fed)
            unseen = [u[len(f):] for u, f in zip(unseen, fed)]
            self.prompt_work = True
        logits = self._feed(unseen)
        for seq, end in zip(self.seqs, ends):
            self.seen[seq] = end
        before = recurrent_states(self.cache, self.recurrent)  # what the proposals' steps go back to
        rings = ring_states(self.cache, self.rings)
        last = mx.array([max(len(u) - 1, 0) for u in unseen])
        token = mx.argmax(mx.take_along_axis(logits, last[:, None, None], axis=1)[:, 0, :self.vocab_limit], axis=-1)
        drafts = [token]
        for _ in range(k - 1):
            logits = self.model(drafts[-1][:, None], cache=self.cache)
            drafts.append(mx.argmax(logits[:, -1, :self.vocab_limit], axis=-1))
        kept = set(self.recurrent) | set(self.rings)
        if k > 1:  # the proposals' positions: the same newest columns in every row
            for i, c in enumerate(leaf_caches(self.cache)):  # (a layer's CacheList, Falcon-H1, in its parts)
                if i not in kept:
                    c.trim(k - 1)
        restore_states(self.cache, self.recurrent, before)
        restore_rings(self.cache, self.rings, rings)
        return {s: d if f else [] for s, d, f in zip(self.seqs, mx.stack(drafts, axis=1).tolist(), fresh)}

    def _feed(self, rows: list[list[int]]) -> mx.array:
        """Feed each row its tokens, right-padded to the longest (:func:`~.rollback.forward_right_padded`)."""
        width = max(len(r) for r in rows)
        padded = mx.array([r + [0] * (width - len(r)) for r in rows])
        return forward_right_padded(self.model, self.cache, self.recurrent, padded, [len(r) for r in rows])
