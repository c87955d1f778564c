"""One continuation's text, made where its deltas are consumed (the API side of the engine).

The engine steps token ids: its deltas carry the new ids (and their logprobs), and end on what ids
decide -- an end-of-sequence or stop token, ``max_tokens``, a finished grammar. A
:class:`TextStream` turns them into text: incremental detokenizing, stop strings matched on the
text (with the tail that could still grow into one held back), and each token's logprob released
with the delta that carries the last of its text. A stop string ends the continuation here: the
stream's final delta says so, and its consumer asks the engine to end the row
(:meth:`~.async_engine.AsyncEngine.generate`); tokens the engine made meanwhile are dropped.

Keeping this beside the consumer is what lets the engine (in its own process, ``--engine-process``)
run its step loop without the text work.
"""

from __future__ import annotations

from typing import Any

from .detokenizer import IncrementalDetokenizer
from .request import FinishReason, GenerationOutput, SamplingParams, TokenLogprob
from .stop import StopStringMatcher


class TextStream:
    def __init__(self, tokenizer: Any, prompt_ids: list[int], sampling: SamplingParams,
                 keep_special_tokens: bool = False, backend: Any = None):
        """``backend``: :func:`~.detokenizer.streaming_backend` of the tokenizer (looked up once)."""
        self.detokenizer = IncrementalDetokenizer(tokenizer, prompt_ids, skip_special_tokens=not keep_special_tokens,
                                                  backend=backend)
        self.stop_matcher = StopStringMatcher(sampling.stop)
        self.min_tokens = sampling.min_tokens
        self.wants_logprobs = sampling.logprobs
        self.tokens = 0  # tokens taken (shown ones; a hidden stop token is counted by the engine)
        self.ids: list[int] = []  # tokens taken and not yet sent
        self.logprobs: list[TokenLogprob] = []  # logprobs taken and not yet sent
        # Where each unsent logprob's token's text starts in detokenizer.text: a logprob is sent once all
        # its token's text is, and never for a token holding (part of) a matched stop string.
        self.starts: list[int] = []
        self.emitted_chars = 0  # characters of detokenizer.text already sent
        self.stop_scan_from = 0  # stop strings count only in text made after min_tokens
        self.done = False  # the final delta was made

    def feed(self, out: GenerationOutput) -> GenerationOutput | None:
        """The delta to hand on for one of the engine's deltas (None: nothing to say yet). A stop
        string makes it final (``finish_reason`` STOP, ``stop_sequence`` set, ``done``)."""
        lps = out.logprobs or ()
        for i, token in enumerate(out.token_ids):
            final = self._take(token, lps[i] if i < len(lps) else None, out)
            if final is not None:
                return final
        if out.finished:
            return self._finish(out)
        text = self.detokenizer.text
        safe = self.stop_matcher.safe_length(text) if self._stops_apply else len(text)
        if safe <= self.emitted_chars:
            return None  # its tokens go with the next delta that has text
        return self._delta(out, text[self.emitted_chars : safe], shown=safe)

    @property
    def _stops_apply(self) -> bool:
        return self.tokens > self.min_tokens

    def _take(self, token: int, logprob: TokenLogprob | None, out: GenerationOutput) -> GenerationOutput | None:
        """Add one token's text; the final delta if it completes a stop string."""
        self.tokens += 1
        self.ids.append(token)
        text = self.detokenizer.text
        if self.wants_logprobs and logprob is not None:
            self.logprobs.append(logprob)
            self.starts.append(len(text))
        self.detokenizer.add_token(token)
        if not self._stops_apply:
            self.stop_scan_from = len(self.detokenizer.text)
            return None
        return self._stopped(out, completion_tokens=self.tokens)

    def _finish(self, out: GenerationOutput) -> GenerationOutput:
        """The engine ended the continuation: flush held-back text (a stop string in it still counts)."""
        self.detokenizer.finalize()
        if out.finish_reason is not FinishReason.ABORT and self._stops_apply:
            final = self._stopped(out)
            if final is not None:
                return final
        return self._final(out, self.detokenizer.text, out.finish_reason)

    def _stopped(self, out: GenerationOutput, completion_tokens: int | None = None) -> GenerationOutput | None:
        """The final delta if the text not yet sent holds a stop string: the text ends where it begins."""
        text = self.detokenizer.text
        at = self.stop_matcher.find(text, max(self.emitted_chars, self.stop_scan_from))
        if at is None:
            return None
        matched = next((s for s in self.stop_matcher.stops if text.startswith(s, at)), None)
        return self._final(out, text[:at], FinishReason.STOP, matched, completion_tokens)

    def _final(self, out: GenerationOutput, text: str, reason: FinishReason, stop_sequence: str | None = None,
               completion_tokens: int | None = None) -> GenerationOutput:
        self.done = True
        # a stop string: the text ends where it began, and so do the logprobs
        delta = self._delta(out, text[self.emitted_chars :], shown=len(text) if stop_sequence else None)
        delta.finish_reason, delta.stop_sequence = reason, stop_sequence
        delta.error, delta.error_status = out.error, out.error_status
        if completion_tokens is not None:
            delta.completion_tokens = completion_tokens
        return delta

    def _delta(self, out: GenerationOutput, text: str, shown: int | None) -> GenerationOutput:
        """The next delta: ``text``, every token taken since the last one, and the logprobs of the
        tokens whose text lies within what is shown once it is sent (``shown`` None: all of them)."""
        logprobs = None
        if self.wants_logprobs:
            n = len(self.logprobs)
            if shown is not None:
                n = 0
                while n < len(self.logprobs) and self._token_end(n) <= shown:
                    n += 1
            logprobs, self.logprobs, self.starts = self.logprobs[:n], self.logprobs[n:], self.starts[n:]
        self.emitted_chars = max(self.emitted_chars, shown) if shown is not None else self.emitted_chars + len(text)
        ids, self.ids = self.ids, []
        return GenerationOutput(out.request_id, index=out.index, text=text, token_ids=ids,
                                prompt_tokens=out.prompt_tokens, completion_tokens=out.completion_tokens,
                                cached_tokens=out.cached_tokens, logprobs=logprobs)

    def _token_end(self, i: int) -> int:
        return self.starts[i + 1] if i + 1 < len(self.starts) else len(self.detokenizer.text)
