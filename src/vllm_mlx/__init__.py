"""vllm-mlx: an OpenAI- and Anthropic-compatible LLM server on MLX."""

from .platform import preload_fast_blas

# Must run before anything imports mlx.core (see vllm_mlx.platform).
BLAS_STATUS = preload_fast_blas()

__version__ = "0.1.0"
