"""Test and benchmark fixtures of vllm-mlx: tiny, real, HF-style model folders.

A development-only package: it lives next to ``vllm_mlx`` in the repository's
``src/`` (importable through the editable install) and is not part of the
wheel.  The server's demo model is not here: ``vllm_mlx.models.demo``, whose
random-model builder and tokenizer training these fixtures reuse.

* ``build_tiny_model`` -- a random qwen3 / llama model mlx-lm loads normally.
* ``build_scripted_model`` -- a model whose output is an exact scripted reply.
* ``first_layers_model`` -- a model's first layers as a draft model.
* ``add_mtp_head`` -- random multi-token-prediction weights for a Qwen3.5-style model.
* ``train_tokenizer`` -- the deterministic byte-level BPE tokenizers they use.
* ``make_lora_adapter`` / ``fused_model`` / ``greedy_tokens`` /
  ``build_quantized_tiny_model`` -- random LoRA adapters in mlx-lm's format
  (``lora_adapters``), their fused models, and a quantized tiny model.
* modules for the other fixtures: ``agent_script``, ``fault_model``,
  ``batch_variant_model``, ``vision_models`` / ``scripted_vision``,
  ``gemma3_vision``, ``gemma4_vision``, ``qwen35_vision``, ``audio_models``,
  ``embedding_models``, ``arch_models``, ``pipeline_models``, ``attacks``.
"""

from .builders import add_mtp_head, build_scripted_model, build_tiny_model, first_layers_model
from .lora_adapters import build_quantized_tiny_model, fused_model, greedy_tokens, make_lora_adapter, peft_copy
from .tokenizer import train_tokenizer

__all__ = [
    "add_mtp_head",
    "build_quantized_tiny_model",
    "build_scripted_model",
    "build_tiny_model",
    "first_layers_model",
    "fused_model",
    "greedy_tokens",
    "make_lora_adapter",
    "peft_copy",
    "train_tokenizer",
]
