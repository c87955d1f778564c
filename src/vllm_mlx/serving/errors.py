"""The serving layer's error: what went wrong with a request, API-neutral.

Every API wing turns an :class:`APIError` into its own wire shape (OpenAI ``{"error": ...}``,
Anthropic ``{"type": "error", ...}``, Responses) with the status it carries.
"""

from __future__ import annotations


class APIError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.headers = headers  # e.g. Retry-After on a 503
        self.status = status
        self.message = message
        self.param = param
        self.code = code
