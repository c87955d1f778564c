"""A tiny, real Gemma 4 vision-language folder built offline (the layout of gemma-4-E2B/E4B).

Gemma 4 checkpoints are vision-language models: ``config.json`` has ``model_type: gemma4``, a
``text_config`` (``gemma4_text``: sliding-window and full-attention layers, per-layer input
embeddings, the last layers sharing the keys/values of earlier ones) and a ``vision_config``
(``gemma4_vision``: a variable-resolution tower whose patches are pooled into soft tokens). An image
keeps its aspect ratio: it is resized to at most ``max_soft_tokens`` pooled patches, so its number of
soft tokens depends on its shape.

The folder built here loads with both loaders: ``mlx_vlm.load(path)`` (the whole model, made by
mlx-vlm's ``gemma4`` classes, with its ``Gemma4Processor``) and ``mlx_lm.load(path)`` (the language
model only, as text). ``bidirectional=True`` writes ``use_bidirectional_attention: "vision"`` in
``text_config`` (as the 26B/31B models do: an image's soft tokens attend to each other both ways).

The tokenizer is the locally trained gemma4-family BPE plus the image tokens ``<|image>``,
``<image|>``, ``<|image|>`` and ``<|video|>``; the chat template is the project's Gemma 4 template
(``<bos><|turn>user\\n...<turn|>\\n<|turn>model\\n``) whose image parts render as ``<|image|>``, which
the processor expands to ``<|image>`` + soft tokens + ``<image|>``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .arch_templates import GEMMA4_TEMPLATE
from .gemma3_vision import with_image_parts, write_image_tokenizer
from .vision_models import random_vision_weights, write_json

IMAGE_TOKENS = ["<|image>", "<image|>", "<|image|>", "<|video|>"]
EOS_TOKENS = ["<turn|>", "<eos>", "<|tool_response>"]
EXTRA_SPECIAL = {"boi_token": "<|image>", "eoi_token": "<image|>", "image_token": "<|image|>",
                 "video_token": "<|video|>"}


def _write_processor_config(path: Path, patch_size: int, pooling: int, max_soft_tokens: int) -> None:
    image = {"do_resize": True, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": False,
             "image_mean": [0.0, 0.0, 0.0], "image_std": [1.0, 1.0, 1.0], "patch_size": patch_size,
             "pooling_kernel_size": pooling, "max_soft_tokens": max_soft_tokens,
             "image_processor_type": "Gemma4ImageProcessor"}
    write_json(path / "processor_config.json", {"processor_class": "Gemma4Processor", "image_processor": image,
                                                 "image_seq_length": max_soft_tokens})


def gemma4_vision_config(ids: dict[str, Any], *, vocab_size: int, hidden_size: int, num_hidden_layers: int,
                         num_kv_shared_layers: int, sliding_window: int, intermediate_size: int,
                         vision_width: int, vision_depth: int, patch_size: int, pooling: int,
                         max_soft_tokens: int, bidirectional: bool) -> dict[str, Any]:
    """``config.json`` in the Hugging Face layout of Gemma 4 (``text_config`` + ``vision_config``)."""
    text = {
        "model_type": "gemma4_text", "hidden_size": hidden_size, "intermediate_size": intermediate_size,
        "num_hidden_layers": num_hidden_layers, "num_attention_heads": 4, "num_key_value_heads": 1,
        "num_global_key_value_heads": None, "head_dim": 16, "global_head_dim": 32, "rms_norm_eps": 1e-6,
        "layer_types": ["full_attention" if (i + 1) % 2 == 0 else "sliding_attention"
                        for i in range(num_hidden_layers)],
        "sliding_window": sliding_window, "num_kv_shared_layers": num_kv_shared_layers,
        "hidden_size_per_layer_input": 16, "vocab_size": vocab_size, "vocab_size_per_layer_input": vocab_size,
        "final_logit_softcapping": 30.0, "hidden_activation": "gelu_pytorch_tanh", "attention_bias": False,
        "attention_dropout": 0.0, "attention_k_eq_v": False, "enable_moe_block": False,
        "use_double_wide_mlp": True, "tie_word_embeddings": True, "max_position_embeddings": 4096,
        "pad_token_id": ids["pad_token_id"], "use_bidirectional_attention": "vision" if bidirectional else None,
        "rope_parameters": {
            "full_attention": {"partial_rotary_factor": 0.25, "rope_theta": 1000000.0, "rope_type": "proportional"},
            "sliding_attention": {"rope_theta": 10000.0, "rope_type": "default"}},
    }
    vision = {
        "model_type": "gemma4_vision", "hidden_size": vision_width, "intermediate_size": 2 * vision_width,
        "num_hidden_layers": vision_depth, "num_attention_heads": 2, "num_key_value_heads": 2,
        "head_dim": vision_width // 2, "global_head_dim": vision_width // 2, "patch_size": patch_size,
        "pooling_kernel_size": pooling, "default_output_length": max_soft_tokens,
        "position_embedding_size": 64, "hidden_activation": "gelu_pytorch_tanh", "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_theta": 100.0, "rope_type": "default"}, "use_clipped_linears": False,
        "standardize": False,
    }
    image = ids["image"]
    return {
        "architectures": ["Gemma4ForConditionalGeneration"], "model_type": "gemma4", "torch_dtype": "float32",
        "text_config": text, "vision_config": vision, "audio_config": None,
        "image_token_id": image["<|image|>"], "boi_token_id": image["<|image>"], "eoi_token_id": image["<image|>"],
        "video_token_id": image["<|video|>"], "vision_soft_tokens_per_image": max_soft_tokens,
        "eos_token_id": ids["eos_token_id"], "bos_token_id": ids["bos_token_id"], "pad_token_id": ids["pad_token_id"],
        "vocab_size": vocab_size, "tie_word_embeddings": True, "initializer_range": 0.02,
        "transformers_version": "4.57.0",
    }


def build_tiny_gemma4_vision_model(
    path: str | Path,
    *,
    vocab_size: int = 2048,
    hidden_size: int = 64,
    num_hidden_layers: int = 4,
    num_kv_shared_layers: int = 2,
    sliding_window: int = 16,
    intermediate_size: int = 128,
    vision_width: int = 32,
    vision_depth: int = 1,
    patch_size: int = 8,
    pooling: int = 2,
    max_soft_tokens: int = 16,
    bidirectional: bool = False,
    seed: int = 0,
    init_scale: float = 1.0,
) -> Path:
    """Write a tiny random Gemma 4 vision-language folder at ``path`` (see the module docstring).

    With the defaults the decoder has four layers (sliding-window of 16 tokens / full attention
    alternating; the last two share the first two's keys/values); an image is resized to at most
    16 pooled 2x2 groups of 8-pixel patches (a square image: 64x64 pixels = 16 soft tokens, a wide
    one fewer). ``init_scale`` multiplies the token embeddings and MLP weights.
    """
    import mlx.core as mx

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    ids = write_image_tokenizer(path, "gemma4", vocab_size, IMAGE_TOKENS, EXTRA_SPECIAL, EOS_TOKENS,
                                with_image_parts(GEMMA4_TEMPLATE, "<|image|>"))
    _write_processor_config(path, patch_size, pooling, max_soft_tokens)
    config = gemma4_vision_config(
        ids, vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
        num_kv_shared_layers=num_kv_shared_layers, sliding_window=sliding_window,
        intermediate_size=intermediate_size, vision_width=vision_width, vision_depth=vision_depth,
        patch_size=patch_size, pooling=pooling, max_soft_tokens=max_soft_tokens, bidirectional=bidirectional,
    )
    weights = random_vision_weights(config, seed, init_scale)
    # mlx-vlm starts the patch position table at ones, which drowns the pixels: make it small and
    # random, and the patch projection larger, so the soft tokens depend on the picture.
    table = "vision_tower.patch_embedder.position_embedding_table"
    mx.random.seed(seed + 1)
    weights[table] = 0.1 * mx.random.normal(weights[table].shape)
    weights["vision_tower.patch_embedder.input_proj.weight"] *= 4.0
    write_json(path / "config.json", config)
    mx.save_safetensors(str(path / "model.safetensors"), weights, metadata={"format": "mlx"})
    return path
