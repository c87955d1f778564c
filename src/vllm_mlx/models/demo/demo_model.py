"""The server's built-in demo model (``vllm-mlx-demo``).

A tiny random qwen3-family model generated deterministically on first use,
so the server can start and stream text without downloading anything:

* hidden 256, 4 layers, 8 attention heads (head_dim 32), 4 KV heads,
  intermediate 512, vocab 4096, untied ``lm_head``: ~4.5M float32
  parameters, ~18 MB on disk.
* Speed (2 CPU cores, mlx CPU with OpenBLAS preloaded, greedy, batch 1,
  ``mlx_lm.stream_generate``): ~3.4 ms per forward pass, ~275 tokens/s
  decode, ~2.3k tokens/s prefill (~155 tokens/s decode without OpenBLAS), so
  the model -- not Python -- is most of the cost of a decode step.

Initialisation (``DEMO_INIT_SCALE`` = 8, untied head, ``visible_text``):
measured over 5 chat prompts x 40 tokens (chat template with
``enable_thinking=False``), greedy and temperature 1.0 (t=1):

===============================  ===================  =====  ===============
init (hidden 256, 4 layers)      distinct tokens/40   EOS    U+FFFD chars
===============================  ===================  =====  ===============
tied, mlx default (scale 1)      greedy 1-2           0/10   greedy ``���``
untied + visible_text, scale 1   greedy 2-14          0/10   t=1: 10
untied + visible_text, scale 4   greedy 21-30         0/10   t=1: 1
untied + visible_text, scale 8   greedy 34-39,        0/10   0
(chosen)                         t=1 38-40
untied + visible_text, scale 16  greedy 34-40         0/10   0
===============================  ===================  =====  ===============

With the tied default a random model maps each token to (nearly) itself, so
greedy decoding repeats one token (often a UTF-8 byte fragment shown as
``\\ufffd``).  An untied head scaled by 8 gives output logits with std ~4.6,
so greedy decoding wanders instead of locking onto a fixed point and
sampling at temperature 1 is peaked enough to pick plausible-looking word
pieces.  ``visible_text`` zeroes the head rows of special, whitespace-only
and partial-UTF-8 tokens (logit exactly 0 while the max of the others is
~16), so they are practically never produced: ~88-90% of the output
characters are non-whitespace (the rest are single spaces), ~83-86% of the
tokens are alphabetic word pieces, and no U+FFFD appears.  As a
consequence the demo model essentially never emits EOS; requests end at
their ``max_tokens``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from .builder import QWEN3, build_random_model

logger = logging.getLogger(__name__)

DEMO_MODEL_NAME = "vllm-mlx-demo"
DEMO_DIR_NAME = "demo-model-v1"
DEMO_MARKER = ".vllm-mlx-demo-complete"
DEMO_INIT_SCALE = 8.0
DEMO_MODEL_KWARGS = {  # arguments of build_random_model for the QWEN3 family
    "hidden_size": 256,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "intermediate_size": 512,
    "vocab_size": 4096,
    "seed": 0,
    "init_scale": DEMO_INIT_SCALE,
    "tie_word_embeddings": False,
    "visible_text": True,
}


def default_cache_root() -> Path:
    """``$VLLM_MLX_CACHE`` or ``~/.cache/vllm-mlx``."""
    env = os.environ.get("VLLM_MLX_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "vllm-mlx"


def build_demo_model(path: str | Path) -> Path:
    """Write the demo model into ``path`` (no caching, no atomicity)."""
    path = Path(path)
    build_random_model(path, QWEN3, **DEMO_MODEL_KWARGS)
    return path


def _is_complete(path: Path) -> bool:
    return (path / DEMO_MARKER).is_file()


def ensure_demo_model(cache_root: Path | None = None) -> Path:
    """Return the demo model folder, building it on first use.

    The folder is ``<cache_root or $VLLM_MLX_CACHE or ~/.cache/vllm-mlx>/
    demo-model-v1``.  It is built in a temporary sibling folder and renamed
    into place, with a marker file written last, so a crash never leaves a
    half-written model and concurrent builders cannot break each other (the
    first rename wins, the others discard their copy).
    """
    root = Path(cache_root).expanduser() if cache_root is not None else default_cache_root()
    target = root / DEMO_DIR_NAME
    if _is_complete(target):
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{DEMO_DIR_NAME}.tmp-", dir=root))
    started = time.monotonic()
    logger.info("building the demo model into %s (first use only: a tokenizer trained here and ~18 MB of "
                "random weights, a few seconds)", target)
    try:
        build_demo_model(tmp)
        size = sum(f.stat().st_size for f in tmp.iterdir() if f.is_file())
        logger.info("built the demo model: %.1f MB in %.1f s", size / 1e6, time.monotonic() - started)
        marker = {"name": DEMO_MODEL_NAME, "dir": DEMO_DIR_NAME, "family": QWEN3.name, **DEMO_MODEL_KWARGS}
        (tmp / DEMO_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        for _ in range(3):
            try:
                os.rename(tmp, target)
                return target
            except OSError:
                if _is_complete(target):  # another builder won the race
                    return target
                # A stale, incomplete folder (not made by this code): move it
                # aside and retry.
                stale = Path(tempfile.mkdtemp(prefix=f".{DEMO_DIR_NAME}.stale-", dir=root))
                try:
                    os.rename(target, stale / "old")
                except OSError:
                    pass
                shutil.rmtree(stale, ignore_errors=True)
        if _is_complete(target):
            return target
        raise RuntimeError(f"could not install the demo model at {target}")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
