"""The serving layer's error: what went wrong with a request, API-neutral.

Every API wing turns an :class:`APIError` into its own wire shape (OpenAI ``{"error": ...}``,
Anthropic ``{"type": "error", ...}``, Responses) with the status it carries. A prompt that does not
fit the context is a :class:`ContextOverflow`, whose numbers let each wing say it the way its
clients recognise (and compact on).
"""

from __future__ import annotations

CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"


class APIError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.headers = headers  # e.g. Retry-After on a 503
        self.status = status
        self.message = message
        self.param = param
        self.code = code


class ContextOverflow(APIError):
    """The prompt, or the prompt and the answer room asked for, does not fit the context (400).

    ``prompt_tokens``: the prompt's length (a lower bound when ``estimated``: refused before
    tokenizing); ``max_prompt_tokens``: the longest prompt that fits (what Anthropic calls the
    maximum); ``max_tokens``: the answer room asked for, when that is what overflowed."""

    def __init__(self, message: str, *, prompt_tokens: int, max_prompt_tokens: int, param: str = "messages",
                 max_tokens: int | None = None, estimated: bool = False):
        super().__init__(400, message, param=param, code=CONTEXT_LENGTH_EXCEEDED)
        self.prompt_tokens = prompt_tokens
        self.max_prompt_tokens = max_prompt_tokens
        self.max_tokens = max_tokens
        self.estimated = estimated
