"""`--warm-prompts FILE`: prefill known prompts at startup so their prefixes are cached before traffic."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

from ..engine.request import SamplingParams
from .requests import new_id
from .state import ServingState

logger = logging.getLogger(__name__)


def read_warm_prompts(path: str) -> list[Any]:
    """A JSON list, or JSON Lines; each item a string, a list of chat messages, or {"messages": [...]}."""
    text = Path(path).read_text()
    try:
        items = json.loads(text)
        items = items if isinstance(items, list) else [items]
    except json.JSONDecodeError:
        items = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [item["messages"] if isinstance(item, dict) and "messages" in item else item for item in items]


def _tokens(state: ServingState, item: Any) -> list[int]:
    if isinstance(item, str):
        return state.tokenizer.encode(item)
    if isinstance(item, list):
        prompt = state.tokenizer.apply_chat_template(item, add_generation_prompt=True, tokenize=False)
        return state.tokenizer.encode(prompt, add_special_tokens=False)
    raise ValueError(f"a warm prompt must be a string or a list of messages, not {type(item).__name__}")


PROGRESS_EVERY_S = 5.0  # a progress line at most this often while prompts are prefilled


async def warm_up(state: ServingState, path: str) -> int:
    """Prefill every prompt of the file (one token generated each); returns how many succeeded.
    Logs a line when it starts (prompts, tokens), at most every few seconds while it runs, and at the end."""
    started = time.monotonic()
    items = read_warm_prompts(path)
    prompts: list[list[int] | None] = []
    for item in items:
        try:
            ids = await state.tokenize(_tokens, state, item)
            prompts.append(ids[: state.max_model_len - 1])
        except Exception as exc:
            logger.warning("warm prompt skipped: %s", exc)
            prompts.append(None)
    total_tokens = sum(len(p) for p in prompts if p)
    logger.info("warm-up: prefilling %d prompt(s), %d tokens, from %s", sum(p is not None for p in prompts),
                total_tokens, path)
    progress = {"done": 0, "tokens": 0, "reported": time.monotonic()}

    async def one(ids: list[int]) -> bool:
        try:
            params = SamplingParams(max_tokens=1, temperature=0.0)
            async for out in state.generate(new_id("warm"), ids, params):
                if out.error:
                    raise RuntimeError(out.error)
        except Exception as exc:
            logger.warning("warm prompt skipped: %s", exc)
            return False
        progress["done"] += 1
        progress["tokens"] += len(ids)
        now = time.monotonic()
        if now - progress["reported"] >= PROGRESS_EVERY_S:
            progress["reported"] = now
            logger.info("warm-up: %d prompt(s), %d of %d tokens prefilled (%.0f tokens/s)", progress["done"],
                        progress["tokens"], total_tokens, progress["tokens"] / max(now - started, 1e-3))
        return True

    done = sum(await asyncio.gather(*(one(ids) for ids in prompts if ids)))
    elapsed = time.monotonic() - started
    logger.info("warmed %d of %d prompts (%d tokens) from %s in %.1f s (%.0f tokens/s)", done, len(items),
                progress["tokens"], path, elapsed, progress["tokens"] / max(elapsed, 1e-3))
    return done
