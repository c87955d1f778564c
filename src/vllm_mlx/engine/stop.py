"""Stop-string matching over a growing, streamed text."""

from __future__ import annotations


class StopStringMatcher:
    """Finds the first stop string in a growing text.

    Matching works on the detokenized text, so a stop string split across
    token boundaries is still found. ``safe_length`` says how much of the text
    can be streamed now: everything except a tail that could still grow into a
    stop string.
    """

    def __init__(self, stops: tuple[str, ...]):
        self.stops = tuple(s for s in stops if s)
        self.longest = max((len(s) for s in self.stops), default=0)

    def find(self, text: str, start: int = 0) -> int | None:
        """Index of the earliest stop string that ends after ``start``, or None."""
        if not self.stops:
            return None
        window_start = max(0, start - self.longest + 1)
        hits = [i for s in self.stops if (i := text.find(s, window_start)) >= 0]
        return min(hits) if hits else None

    def safe_length(self, text: str) -> int:
        """Length of the prefix of ``text`` that can no longer become part of a stop string."""
        if not self.stops:
            return len(text)
        held = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(text)), held, -1):
                if text.endswith(stop[:k]):
                    held = k
                    break
        return len(text) - held
