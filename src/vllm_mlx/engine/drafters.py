"""Which drafter serves a model: the method ``--speculative`` comes to (``auto`` included) and the
proposer it loads, or why the model cannot speculate (:mod:`.speculative` runs the proposals)."""

from __future__ import annotations

import logging
from typing import Any

from mlx_lm.models.cache import ArraysCache, KVCache, RotatingKVCache, make_prompt_cache

from .cache_layout import leaf_caches
from .ngram import NgramProposer
from .rollback import honours_lengths

logger = logging.getLogger(__name__)


def speculation_unsupported(model: Any, deterministic: bool) -> str | None:
    """Why speculation cannot run on this model, served or as a draft (None when it can)."""
    if deterministic:
        return "--deterministic computes every row alone"
    caches = leaf_caches(make_prompt_cache(model))  # a layer's CacheList (Falcon-H1), its parts one by one
    allowed = (KVCache, RotatingKVCache)
    # recurrent state of any kind (a vision model's too): whether it stops at a row's length is checked below
    others = {type(c).__name__ for c in caches if type(c) not in allowed and not isinstance(c, ArraysCache)}
    if others:
        return (f"its layers keep {', '.join(sorted(others))} caches, whose rejected positions cannot "
                "be dropped yet")
    if any(isinstance(c, ArraysCache) for c in caches) and not honours_lengths(model):
        return "its recurrent layers do not stop at a row's length, which rolling back rejected positions needs"
    return None


def chosen_method(config: Any, model: Any) -> str:
    """What ``config.speculative`` comes to for ``model``: ``auto`` is ``draft`` with a draft model, else
    prompt lookup where the model's caches can drop rejected positions, off with ``--deterministic``."""
    if config.speculative != "auto":
        return config.speculative
    if config.draft_model:
        return "draft"
    why = speculation_unsupported(model, config.deterministic)
    if why:
        logger.info("speculative decoding is off (--speculative auto): %s", why)
        return "off"
    return "ngram"


def make_proposer(loaded: Any, config: Any, vocab_width: int, runner: Any, prefix: Any = None) -> Any:
    """The proposer of ``config.speculative`` for the served model (``loaded``, run by ``runner``, its
    prefix cache ``prefix``), or a ValueError saying why this model cannot speculate."""
    why = speculation_unsupported(loaded.model, config.deterministic)
    if why:
        raise ValueError(f"--speculative {config.speculative} cannot serve this model: {why}")
    logger.info("speculative decoding: %s, up to %d tokens a step", config.speculative, config.num_speculative_tokens)
    if config.speculative == "mtp":  # the head was loaded with the model (mtp.serve_with_head)
        from .mtp import MTPProposer

        return MTPProposer(loaded.model, runner, vocab_width, getattr(loaded, "whole_output_head", None))
    if config.speculative == "draft":
        from .draft import load_draft

        proposer = load_draft(config.draft_model, loaded, vocab_width, prefix)
        why = speculation_unsupported(proposer.model, deterministic=False)
        if why:
            raise ValueError(f"--draft-model {config.draft_model} cannot draft: {why}")
        return proposer
    return NgramProposer()
