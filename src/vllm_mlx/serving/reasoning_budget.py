"""One reasoning contract for every API: how much a model may think before it answers.

Each API says it its own way -- chat ``reasoning_effort``, Responses ``reasoning.effort``, Anthropic
``thinking`` (``enabled`` with ``budget_tokens``, ``adaptive``, ``disabled``) and ``output_config.effort``,
and this server's ``max_thinking_tokens`` -- and the wings put it on the :class:`ChatRequest` as
``reasoning_effort`` / ``enable_thinking`` / ``max_thinking_tokens``. Here it becomes one engine
budget: after that many tokens of reasoning the engine writes the end-of-reasoning marker itself and
the model answers (models whose tokenizer has think markers and a reasoning parser).

=============  ===========  ===============================================
effort         thinking     budget (of ``max_tokens`` = M)
=============  ===========  ===============================================
none, minimal  off          --
low            on           M / 4
medium         on           M / 2
high           on           3 M / 4
xhigh, max     on           M - answer floor
(absent)       template     no budget (the model decides)
=============  ===========  ===============================================

An explicit budget (``max_thinking_tokens``, Anthropic ``budget_tokens``) wins over an effort. Every
budget leaves an answer floor of ``min(1024, M / 4)`` tokens. An effort outside the table is a 400.
"""

from __future__ import annotations

from typing import Any

from .errors import APIError

EFFORT_FRACTIONS: dict[str, float | None] = {
    "none": None, "minimal": None, "low": 0.25, "medium": 0.5, "high": 0.75, "xhigh": 1.0, "max": 1.0,
}
THINKING_OFF = ("none", "minimal")
ANSWER_FLOOR = 1024


def check_effort(effort: Any, param: str = "reasoning_effort") -> None:
    if effort is not None and effort not in EFFORT_FRACTIONS:
        raise APIError(400, f"{param} must be one of {', '.join(EFFORT_FRACTIONS)}, not {effort!r}", param=param,
                       code="invalid_reasoning_effort")


def effort_switches(effort: str | None) -> dict[str, Any]:
    """Chat-template kwargs for an effort: passed on as ``reasoning_effort`` (gpt-oss templates read
    it) and thinking switched off for ``none``/``minimal``."""
    if effort is None:
        return {}
    check_effort(effort)
    return {"reasoning_effort": effort, "enable_thinking": effort not in THINKING_OFF}


def answer_floor(max_tokens: int) -> int:
    return max(1, min(ANSWER_FLOOR, max_tokens // 4))


def thinking_budget(effort: str | None, explicit: int | None, max_tokens: int) -> int | None:
    """The engine's reasoning budget for a request whose answer may take ``max_tokens`` tokens."""
    room = max(max_tokens - answer_floor(max_tokens), 0)
    if explicit is not None:
        return min(explicit, room)
    fraction = EFFORT_FRACTIONS.get(effort) if effort is not None else None
    if fraction is None:
        return None
    return min(int(max_tokens * fraction), room)
