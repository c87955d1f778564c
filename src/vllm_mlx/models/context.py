"""The context window a model's config declares: the one reader for the loader, `doctor` and the CLI.

No heavy imports: the CLI reads it before any model is loaded.
"""

from __future__ import annotations

import json
from pathlib import Path

# Keys architectures use for their context window, in the order they are trusted.
CONTEXT_KEYS = ("max_position_embeddings", "max_seq_len", "n_positions", "seq_length", "max_sequence_length")
FALLBACK_CONTEXT = 4096  # a config that declares none


def declared_context_length(config: dict) -> int | None:
    """The window the config declares (its text_config's for multimodal configs); None if none."""
    for source in (config, config.get("text_config") or {}):
        if not isinstance(source, dict):
            continue
        for key in CONTEXT_KEYS:
            value = source.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


def context_length(config: dict) -> int:
    """The model's context window from its config, FALLBACK_CONTEXT when it declares none."""
    return declared_context_length(config) or FALLBACK_CONTEXT


def read_context_length(config_json: Path) -> int | None:
    """declared_context_length of a config.json file; None when it is unreadable."""
    try:
        config = json.loads(Path(config_json).read_text())
    except (OSError, ValueError):
        return None
    return declared_context_length(config) if isinstance(config, dict) else None
