"""Tiny, real, HF-style model folders for tests and the built-in demo model.

* ``build_tiny_model`` -- a random qwen3 / llama model mlx-lm loads normally.
* ``build_scripted_model`` -- a model whose output is an exact scripted reply.
* ``ensure_demo_model`` / ``DEMO_MODEL_NAME`` -- the server's demo model.
* ``train_tokenizer`` -- the deterministic byte-level BPE tokenizers they use.
"""

from .builders import build_scripted_model, build_tiny_model
from .demo import DEMO_MODEL_NAME, ensure_demo_model
from .tokenizer import train_tokenizer

__all__ = [
    "DEMO_MODEL_NAME",
    "build_scripted_model",
    "build_tiny_model",
    "ensure_demo_model",
    "train_tokenizer",
]
