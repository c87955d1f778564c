"""Prompts refused by size before they are tokenized, and tokenizer work on bounded lanes.

**The size bound.** One token stands for at most ``L`` characters of input (models/vocab.py: the
vocabulary's longest entry, x3 when a normalizer may compose characters; 16 for the test tokenizer),
so a text of C characters needs at least C / L tokens. A prompt longer than ``token budget x L``
characters -- the budget being ``--max-prompt-tokens`` or ``--max-model-len`` -- cannot fit, and is
refused with a 400 before any tokenizer work (a 10 MB prompt took a minute to tokenize, only to be
refused for its length). It is checked on the rendered prompt, so the chat template's text counts too.

**The lanes.** Tokenizing a prompt near that bound still takes seconds. Tokenizer work runs on two
thread pools: texts up to ``LARGE_CHARS`` on the small lane, longer ones on the large lane, which
holds at most ``LARGE_WAITING`` jobs (more get 503 + Retry-After). A flood of large prompts queues
behind itself; a short request never waits behind it. (The tokenizers release the GIL while they
encode, so the lanes really run side by side.)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from typing import Any, Callable

from pydantic import BaseModel

from ..models.vocab import max_chars_per_token
from .errors import APIError, ContextOverflow

logger = logging.getLogger(__name__)

LARGE_CHARS = 64 * 1024  # texts above this many characters tokenize on the large lane
SMALL_WORKERS = 4
LARGE_WORKERS = 1
LARGE_WAITING = 8  # large jobs queued or running at once; more are refused (503)
RETRY_AFTER_S = 2
WALK_NODE_CHARS = 8  # what each list item / field counts for when estimating a request's size


def text_size(value: Any, limit: int) -> int:
    """Characters of text in a request (strings, lists, dicts, pydantic models), counted up to ``limit``
    (the walk stops there, so it costs O(limit) whatever the request's size)."""
    total, stack = 0, [value]
    while stack and total <= limit:
        item = stack.pop()
        total += WALK_NODE_CHARS
        if isinstance(item, str):
            total += len(item)
        elif isinstance(item, BaseModel):
            stack.extend(item.__dict__.values())
            stack.extend((item.model_extra or {}).values())
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return total


class PromptGuard:
    """The size bound and the tokenizer lanes of one served model."""

    def __init__(self, tokenizer: Any, token_budget: int, budget_flag: str = "--max-model-len"):
        self.token_budget = token_budget
        self.budget_flag = budget_flag
        self.chars_per_token = max_chars_per_token(tokenizer)
        self.max_chars = token_budget * self.chars_per_token
        self._small = concurrent.futures.ThreadPoolExecutor(SMALL_WORKERS, thread_name_prefix="vllm-mlx-tok")
        self._large = concurrent.futures.ThreadPoolExecutor(LARGE_WORKERS, thread_name_prefix="vllm-mlx-tok-large")
        self.large_jobs = 0  # queued or running on the large lane (touched on the event loop only)

    def check(self, text: str, param: str = "messages") -> None:
        """400 when ``text`` has more characters than any prompt that fits the token budget."""
        if len(text) > self.max_chars:
            raise ContextOverflow(
                f"the prompt has {len(text)} characters, more than fit the budget of {self.token_budget} "
                f"tokens ({self.budget_flag}) at {self.chars_per_token} characters per token at most for "
                f"this tokenizer; it was refused before tokenizing", param=param, estimated=True,
                prompt_tokens=-(-len(text) // self.chars_per_token), max_prompt_tokens=self.token_budget)

    async def run(self, fn: Callable, *args: Any) -> Any:
        """``fn(*args)`` on the lane its text size calls for."""
        loop = asyncio.get_running_loop()
        if text_size(args, LARGE_CHARS) <= LARGE_CHARS:
            return await loop.run_in_executor(self._small, fn, *args)
        if self.large_jobs >= LARGE_WAITING:
            logger.warning("refused a large prompt: %d large prompts are being tokenized already", self.large_jobs)
            raise APIError(503, f"the server is busy tokenizing {self.large_jobs} large prompts; retry shortly",
                           code="tokenizer_busy", headers={"Retry-After": str(RETRY_AFTER_S)})
        self.large_jobs += 1  # until the job is done on its thread (a gone client does not stop it)
        future = self._large.submit(fn, *args)
        future.add_done_callback(lambda _: _call_soon(loop, self._large_done))
        return await asyncio.wrap_future(future)

    def _large_done(self) -> None:
        self.large_jobs -= 1


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable) -> None:
    try:
        loop.call_soon_threadsafe(fn)
    except RuntimeError:  # the loop is closed: the server is stopping
        pass
