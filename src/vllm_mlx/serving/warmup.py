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


async def warm_up(state: ServingState, path: str) -> int:
    """Prefill every prompt of the file (one token generated each); returns how many succeeded."""
    started = time.monotonic()
    items = read_warm_prompts(path)

    async def one(item: Any) -> bool:
        try:
            ids = await state.tokenize(_tokens, state, item)
            params = SamplingParams(max_tokens=1, temperature=0.0)
            async for out in state.generate(new_id("warm"), ids[: state.max_model_len - 1], params):
                if out.error:
                    raise RuntimeError(out.error)
            return True
        except Exception as exc:
            logger.warning("warm prompt skipped: %s", exc)
            return False

    done = sum(await asyncio.gather(*(one(item) for item in items)))
    logger.info("warmed %d of %d prompts from %s in %.1f s", done, len(items), path, time.monotonic() - started)
    return done
