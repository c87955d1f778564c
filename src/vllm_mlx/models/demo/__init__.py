"""The built-in demo model: what ``vllm-mlx serve`` without a model builds and serves.

* ``demo_model`` -- its name (``vllm-mlx-demo``), size and cache folder:
  ``ensure_demo_model()`` builds it once under ``$VLLM_MLX_CACHE`` (default
  ``~/.cache/vllm-mlx``) and returns the folder.
* ``builder`` -- ``build_random_model``: a tiny random-weight HF-style model
  folder of a ``ModelFamily`` (``QWEN3`` ships) that mlx-lm loads normally.
* ``tokenizer`` -- ``train_bpe_tokenizer``: the deterministic byte-level BPE
  tokenizer trained at run time on a corpus generated in code.
* ``chat_template`` -- the Qwen3 (ChatML) Jinja chat template.

Nothing is downloaded.  The test fixtures (``vllm_mlx_testing``, a
development-only package outside the wheel) build on these.
"""

from .demo_model import DEMO_MODEL_NAME, build_demo_model, ensure_demo_model

__all__ = ["DEMO_MODEL_NAME", "build_demo_model", "ensure_demo_model"]
