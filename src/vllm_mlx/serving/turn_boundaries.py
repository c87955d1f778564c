"""Where a conversation is likely to branch: prompt positions worth a prefix-cache checkpoint.

Models with recurrent or sliding-window layers can only resume from a saved state (a checkpoint),
so the engine needs to know, before prefilling, which positions later requests will share:

* the end of the system prompt and tools — every new session with the same set-up shares it;
* the ends of the last few messages — the next turn re-renders the history, and templates often
  render the newest turn differently once it is no longer the newest (a thinking template drops
  the generation prompt's ``<think>`` and earlier reasoning), so the end of the last message before
  the generation prompt is what the next turn shares;
* the start of each recent user message — where an edited or regenerated turn branches;
* the end of the generation prompt's role header (``<|im_start|>assistant\n``), before any
  reasoning opener the next turn will not repeat.

Each candidate is found by rendering a prefix of the messages with the same template (plainly, or
followed by an empty user message when the template needs a user turn last) and taking the part
of the full prompt text it shares; the position is then the number of prompt tokens that text
tokenizes to, kept only where those tokens really are a prefix of the prompt. A wrong guess costs
nothing but a checkpoint that is never hit: lookups match tokens, not positions.
"""

from __future__ import annotations

import os
from typing import Any, Callable

MAX_RECENT_USER_TURNS = 2  # user messages (from the end) whose start is a candidate
MIN_GAP = 2  # tokens: of two cuts this close, only the later is kept
Render = Callable[[list[dict[str, Any]]], str]


def _shared_chars(a: str, b: str) -> int:
    return len(os.path.commonprefix([a, b]))


def _shared_tokens(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def candidate_prefixes(messages: list[dict[str, Any]]) -> list[int]:
    """How many leading messages each candidate boundary keeps."""
    n_system = 0
    while n_system < len(messages) and messages[n_system].get("role") in ("system", "developer"):
        n_system += 1
    users = [i for i, m in enumerate(messages) if m.get("role") == "user" and i >= n_system]
    wanted = {n_system, len(messages) - 1, len(messages)} | set(users[-MAX_RECENT_USER_TURNS:])
    return sorted(k for k in wanted if 0 <= k <= len(messages))


def turn_boundaries(render: Render, encode: Callable[[str], list[int]], messages: list[dict[str, Any]],
                    text: str, ids: list[int]) -> tuple[int, ...]:
    """Token positions in ``ids`` (the tokens of ``text``) at the candidate boundaries."""
    cuts: set[int] = set()
    for k in candidate_prefixes(messages):
        variants = ([messages[:k]] if k else []) + [messages[:k] + [{"role": "user", "content": ""}]]
        if k == len(messages):  # the assistant turn's header, as the next turn renders this answer
            variants.append(messages + [{"role": "assistant", "content": "x"}, {"role": "user", "content": ""}])
        for variant in variants:
            try:
                rendered = render(variant)
            except Exception:  # a template that refuses this shape (e.g. roles must alternate)
                continue
            shared = _shared_chars(rendered, text)
            if 0 < shared < len(text):
                cuts.add(shared)
    positions = set()
    for c in sorted(cuts):
        n = _shared_tokens(encode(text[:c]), ids)
        if 0 < n < len(ids):
            positions.add(n)
    ordered = sorted(positions)
    # A cut a token or two before another one (``<|im_end|>`` vs ``<|im_end|>\n<|im_start|>``) is
    # shared by the same continuations: keep the later one.
    return tuple(p for p, after in zip(ordered, ordered[1:] + [None]) if after is None or after - p > MIN_GAP)


def remap_after_media(positions: tuple[int, ...], before: list[int], after: list[int],
                      media_ids: set[int]) -> tuple[int, ...]:
    """Positions in ``before`` (the rendered prompt, one placeholder per image/video) as positions in
    ``after`` (the placeholders expanded to one token per media patch); positions past a point where
    the two cannot be aligned are dropped.

    An expansion may also add tokens around the media run (Gemma 3 turns the template's
    ``<start_of_image>`` into ``\n\n<start_of_image>`` + soft tokens + ``<end_of_image>\n\n``):
    where the two differ, the walk resumes at the nearest place where ``RESYNC`` tokens agree again
    (media runs in ``after`` are skipped whole); the positions in between are dropped."""
    wanted, out, i, j = set(positions), [], 0, 0
    while i < len(before):
        if i in wanted:  # before[:i] and after[:j] hold the same text and media
            out.append(j)
            wanted.discard(i)
        token = before[i]
        if j >= len(after) or after[j] != token:
            resumed = _resync(before, after, i, j, media_ids)
            if resumed is None:
                return tuple(out)
            i, j = resumed
            continue
        i, j = i + 1, j + 1
        if token in media_ids and (i >= len(before) or before[i] != token):
            while j < len(after) and after[j] == token:
                j += 1
    return tuple(out)


RESYNC = 3  # tokens that must agree where the walk resumes
RESYNC_WINDOW = 16  # tokens (not counting media runs) searched on each side


def _resync(before: list[int], after: list[int], i: int, j: int, media_ids: set[int]) -> tuple[int, int] | None:
    """The first (i', j') at or past a mismatch at (i, j) where ``RESYNC`` tokens (fewer at the end
    of ``before``) agree again."""
    starts, k, budget = [], j, RESYNC_WINDOW
    while k < len(after) and budget >= 0:
        starts.append(k)
        if after[k] in media_ids:
            while k < len(after) and after[k] in media_ids:
                k += 1
        else:
            k, budget = k + 1, budget - 1
    for i2 in range(i, min(i + RESYNC_WINDOW, len(before)) + 1):
        if i2 == len(before):
            return i2, j
        n = min(RESYNC, len(before) - i2)
        for j2 in starts:
            if before[i2:i2 + n] == after[j2:j2 + n]:
                return i2, j2
    return None
