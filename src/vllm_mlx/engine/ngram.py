"""Prompt-lookup proposals (``--speculative ngram``): a row whose latest tokens also occur earlier in its
prompt or output proposes the tokens that followed them there -- agents re-emit code, file contents and
tool arguments they just read, and a repeating stretch continues with its period. No model runs."""

from __future__ import annotations

from .sequence import Sequence

NGRAM_SIZES = (4, 3, 2)  # the suffix looked up, longest first
PROMPT_WINDOW = 16384  # prompt tokens a row's n-gram index covers (its last ones)
BACKFILL = 2048  # prompt positions indexed per proposal, from the prompt's end backwards


class NgramIndex:
    """A row's tokens, and where each short n-gram of them last occurred with a token after it.

    The prompt is indexed from its end backwards, ``BACKFILL`` positions per call and its last
    ``PROMPT_WINDOW`` tokens at most, so a long prompt never stalls a step; generated tokens are indexed
    as they come."""

    def __init__(self, prompt: list[int]) -> None:
        self.tokens: list[int] = list(prompt)
        self._ends: dict[tuple[int, ...], int] = {}  # n-gram -> position right after its latest occurrence
        self._prompt_end = len(prompt)
        self._unindexed = len(prompt)  # prompt positions below this are not indexed yet
        self._floor = max(len(prompt) - PROMPT_WINDOW, 0)

    def extend(self, new: list[int]) -> None:
        toks, ends = self.tokens, self._ends
        for tok in new:
            end = len(toks)
            for n in NGRAM_SIZES:
                if end >= n:
                    ends[tuple(toks[end - n:end])] = end  # that n-gram now has a continuation: ``tok``
            toks.append(tok)

    def backfill(self) -> None:
        """Index the next stretch of the prompt (older positions never displace newer ones)."""
        toks, ends = self.tokens, self._ends
        stop = max(self._unindexed - BACKFILL, self._floor)
        for end in range(min(self._unindexed, self._prompt_end - 1), stop - 1, -1):  # end: a continuation exists
            for n in NGRAM_SIZES:
                if end >= n:
                    ends.setdefault(tuple(toks[end - n:end]), end)
        self._unindexed = stop

    def propose(self, k: int) -> list[int]:
        """Up to ``k`` tokens that followed the latest earlier occurrence of the longest matching suffix
        (a repeating stretch continues with its period)."""
        if self._unindexed > self._floor:
            self.backfill()
        toks = self.tokens
        for n in NGRAM_SIZES:
            if len(toks) > n:
                end = self._ends.get(tuple(toks[-n:]))
                if end is not None:
                    period = len(toks) - end
                    return [toks[end + j % period] for j in range(k)]
        return []


class NgramProposer:
    """The proposals of ``--speculative ngram``: one :class:`NgramIndex` per row, kept up to date with
    the row's output."""

    method = "ngram"

    def __init__(self) -> None:
        self._indexes: dict[Sequence, NgramIndex] = {}

    def _index(self, seq: Sequence) -> NgramIndex:
        index = self._indexes.get(seq)
        if index is None:
            index = self._indexes[seq] = NgramIndex(seq.prompt_ids)
        index.extend(seq.output_ids[len(index.tokens) - len(seq.prompt_ids):])
        return index

    def propose(self, seqs: list[Sequence], wants: list[int]) -> list[list[int]]:
        """Up to ``wants[i]`` tokens for row i (none where it is 0)."""
        return [self._index(seq).propose(k) if k else [] for seq, k in zip(seqs, wants)]

    def may_propose(self, seqs: list[Sequence], wants: list[int]) -> bool:
        """Whether some row has a proposal now (cheap: a dictionary lookup per row)."""
        return any(self.propose(seqs, wants))

    def forget(self, seqs: list[Sequence]) -> None:
        for seq in seqs:
            self._indexes.pop(seq, None)
