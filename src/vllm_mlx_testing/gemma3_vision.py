"""A tiny, real Gemma 3 vision-language folder built offline (the layout of gemma-3-4b-it).

Gemma 3 checkpoints are vision-language models: ``config.json`` has ``model_type: gemma3``, a
``text_config`` (``gemma3_text``: sliding-window attention layers with a global layer every
``sliding_window_pattern``-th layer) and a ``vision_config`` (a SigLIP tower); an image is
``mm_tokens_per_image`` soft tokens (the tower's patches average-pooled, normalized and projected).
The weights hold ``vision_tower.*`` and ``multi_modal_projector.*`` beside ``language_model.*``.

The folder built here loads with both loaders:

* ``mlx_vlm.load(path)`` -- the whole model (mlx-vlm's ``gemma3`` classes made the weights; its
  ``Gemma3Processor`` with transformers' Gemma 3 image processor);
* ``mlx_lm.load(path)`` -- the language model only, as text (mlx-lm's ``gemma3`` drops the vision
  weights and reads ``text_config``).

The embeddings are tied (no ``lm_head`` saved, as in the real checkpoints). The tokenizer is the
locally trained gemma3-family BPE (it prepends ``<bos>`` on encode, like Gemma's) plus the image
tokens ``<start_of_image>``, ``<end_of_image>`` and ``<image_soft_token>``. The chat template is the
project's Gemma 3 template (``<bos><start_of_turn>user\\n...<end_of_turn>\\n<start_of_turn>model\\n``,
the system message merged into the first user turn) whose image parts render as
``<start_of_image>``; the processor expands each to ``\\n\\n<start_of_image>`` + soft tokens +
``<end_of_image>\\n\\n``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .arch_templates import GEMMA3_TEMPLATE
from .chat_templates import TEXT_OF_MACRO
from .qwen35_vision import quantize_language_weights
from .tokenizer import FAMILY_TOKENS, train_tokenizer
from .vision_models import random_vision_weights, write_json

IMAGE_TOKENS = ["<start_of_image>", "<end_of_image>", "<image_soft_token>"]
EOS_TOKENS = ["<end_of_turn>", "<eos>"]
EXTRA_SPECIAL = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"}
# Scaled by ``init_scale`` besides the embeddings and MLPs (see ``build_tiny_gemma3_vision_model``).
LIVELIER_WEIGHTS = ("self_attn.v_proj", "self_attn.o_proj")


def with_image_parts(template: str, marker: str) -> str:
    """``template`` (one of ``arch_templates``, starting with the shared text macro) whose text macro
    also renders image parts as ``marker``."""
    assert template.startswith(TEXT_OF_MACRO)
    part_end = "{%- endif -%}\n{%- endfor -%}"
    image_part = ("{%- elif part is mapping and part.get('type') in ('image', 'image_url', 'input_image') -%}"
                  "{{- '" + marker + "' -}}\n")
    return TEXT_OF_MACRO.replace(part_end, image_part + part_end, 1) + template[len(TEXT_OF_MACRO):]


def gemma3_vision_template() -> str:
    """The project's Gemma 3 template whose image parts render as ``<start_of_image>``."""
    return with_image_parts(GEMMA3_TEMPLATE, "<start_of_image>")


def write_image_tokenizer(path: Path, family: str, vocab_size: int, image_tokens: list[str],
                          extra_special: dict[str, str], eos_tokens: list[str], template: str) -> dict[str, Any]:
    """The ``family`` tokenizer (which prepends ``<bos>``) trained for ``vocab_size`` minus the image
    tokens, plus those; its config names them (``extra_special_tokens``: ``boi_token``, ...), as
    the processors read them. Returns the ids the config needs."""
    from tokenizers import AddedToken

    tok = train_tokenizer(family, vocab_size - len(image_tokens))
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in image_tokens])
    assert tok.get_vocab_size() == vocab_size
    tok.save(str(path / "tokenizer.json"))
    specials = [*FAMILY_TOKENS[family], *((t, True) for t in image_tokens)]
    added = {str(tok.token_to_id(content)): {"content": content, "lstrip": False, "normalized": False,
                                             "rstrip": False, "single_word": False, "special": special}
             for content, special in specials}
    write_json(path / "tokenizer_config.json", {
        "add_bos_token": True, "add_eos_token": False, "add_prefix_space": False,
        "added_tokens_decoder": added, "bos_token": "<bos>", "chat_template": template,
        "clean_up_tokenization_spaces": False, "eos_token": "<eos>", "errors": "replace",
        "extra_special_tokens": extra_special, "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": 4096, "pad_token": "<pad>", "split_special_tokens": False,
        "tokenizer_class": "PreTrainedTokenizerFast", "unk_token": None,
    })
    write_json(path / "special_tokens_map.json", {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>",
                                                   **extra_special})
    write_json(path / "chat_template.json", {"chat_template": template})
    ids = {
        "eos_token_id": [tok.token_to_id(t) for t in eos_tokens],
        "bos_token_id": tok.token_to_id("<bos>"),
        "pad_token_id": tok.token_to_id("<pad>"),
        "image": {t: tok.token_to_id(t) for t in image_tokens},
    }
    write_json(path / "generation_config.json", {
        "bos_token_id": ids["bos_token_id"], "do_sample": True, "eos_token_id": ids["eos_token_id"],
        "pad_token_id": ids["pad_token_id"], "top_k": 64, "top_p": 0.95, "transformers_version": "4.57.0"})
    return ids


def _write_processor_configs(path: Path, image_size: int, mm_tokens_per_image: int) -> None:
    write_json(path / "preprocessor_config.json", {
        "do_convert_rgb": None, "do_normalize": True, "do_pan_and_scan": None, "do_rescale": True,
        "do_resize": True, "image_mean": [0.5, 0.5, 0.5], "image_processor_type": "Gemma3ImageProcessor",
        "image_seq_length": mm_tokens_per_image, "image_std": [0.5, 0.5, 0.5],
        "pan_and_scan_max_num_crops": None, "pan_and_scan_min_crop_size": None,
        "pan_and_scan_min_ratio_to_activate": None, "processor_class": "Gemma3Processor", "resample": 2,
        "rescale_factor": 1 / 255, "size": {"height": image_size, "width": image_size},
    })
    write_json(path / "processor_config.json", {"image_seq_length": mm_tokens_per_image,
                                                 "processor_class": "Gemma3Processor"})


def gemma3_vision_config(ids: dict[str, Any], *, vocab_size: int, hidden_size: int, num_hidden_layers: int,
                         sliding_window_pattern: int, sliding_window: int, num_attention_heads: int,
                         num_key_value_heads: int, head_dim: int, intermediate_size: int,
                         vision_width: int, vision_depth: int, image_size: int, patch_size: int,
                         mm_tokens_per_image: int) -> dict[str, Any]:
    """``config.json`` in the Hugging Face layout of Gemma 3 (``text_config`` + ``vision_config``).
    ``mm_tokens_per_image`` is written where Hugging Face has it (top level) and where mlx-vlm reads
    it (``text_config``); ``vocab_size`` also at the top level, which mlx-lm's ``gemma3`` reads."""
    layer_types = ["full_attention" if (i + 1) % sliding_window_pattern == 0 else "sliding_attention"
                   for i in range(num_hidden_layers)]
    text = {
        "model_type": "gemma3_text", "hidden_size": hidden_size, "intermediate_size": intermediate_size,
        "num_hidden_layers": num_hidden_layers, "num_attention_heads": num_attention_heads,
        "num_key_value_heads": num_key_value_heads, "head_dim": head_dim, "query_pre_attn_scalar": head_dim,
        "rms_norm_eps": 1e-6, "vocab_size": vocab_size, "layer_types": layer_types,
        "sliding_window": sliding_window, "sliding_window_pattern": sliding_window_pattern,
        "rope_theta": 1_000_000.0, "rope_local_base_freq": 10_000.0, "rope_scaling": None,
        "hidden_activation": "gelu_pytorch_tanh", "attention_bias": False, "attention_dropout": 0.0,
        "attn_logit_softcapping": None, "final_logit_softcapping": None, "cache_implementation": "hybrid",
        "max_position_embeddings": 4096, "mm_tokens_per_image": mm_tokens_per_image,
    }
    vision = {
        "model_type": "siglip_vision_model", "hidden_size": vision_width, "intermediate_size": 2 * vision_width,
        "num_hidden_layers": vision_depth, "num_attention_heads": 2, "patch_size": patch_size,
        "image_size": image_size, "num_channels": 3, "layer_norm_eps": 1e-6, "vision_use_head": False,
        "hidden_act": "gelu_pytorch_tanh",
    }
    image = ids["image"]
    return {
        "architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3", "torch_dtype": "float32",
        "text_config": text, "vision_config": vision, "mm_tokens_per_image": mm_tokens_per_image,
        "boi_token_index": image["<start_of_image>"], "eoi_token_index": image["<end_of_image>"],
        "image_token_index": image["<image_soft_token>"], "eos_token_id": ids["eos_token_id"],
        "bos_token_id": ids["bos_token_id"], "pad_token_id": ids["pad_token_id"], "vocab_size": vocab_size,
        "initializer_range": 0.02, "transformers_version": "4.57.0",
    }


def build_tiny_gemma3_vision_model(
    path: str | Path,
    *,
    vocab_size: int = 2048,
    hidden_size: int = 64,
    num_hidden_layers: int = 4,
    sliding_window_pattern: int = 2,
    sliding_window: int = 16,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 1,
    head_dim: int = 16,
    intermediate_size: int = 128,
    vision_width: int = 32,
    vision_depth: int = 1,
    image_size: int = 64,
    patch_size: int = 8,
    mm_tokens_per_image: int = 16,
    quantize_bits: int | None = None,
    seed: int = 0,
    init_scale: float = 1.0,
) -> Path:
    """Write a tiny random Gemma 3 vision-language folder at ``path`` (see the module docstring).

    With the defaults the decoder has four layers, sliding-window (16 tokens) and global attention
    alternating; an image is resized to 64x64 pixels = 8x8 patches of 8, pooled to 4x4 = 16 soft
    tokens. ``quantize_bits`` (4 or 8) stores the language model quantized like mlx-vlm's 4-/8-bit
    conversions (which also store the tied ``lm_head``, quantized). The projector into the language
    model (mlx-vlm initializes it to ones) is random; at the default ``init_scale`` greedy output
    varies token by token and with the image (a larger scale, which multiplies the token
    embeddings, MLP weights and ``LIVELIER_WEIGHTS``, makes this model repeat one token).
    """
    import mlx.core as mx

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    ids = write_image_tokenizer(path, "gemma3", vocab_size, IMAGE_TOKENS, EXTRA_SPECIAL, EOS_TOKENS,
                                gemma3_vision_template())
    _write_processor_configs(path, image_size, mm_tokens_per_image)
    config = gemma3_vision_config(
        ids, vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
        sliding_window_pattern=sliding_window_pattern, sliding_window=sliding_window,
        num_attention_heads=num_attention_heads, num_key_value_heads=num_key_value_heads, head_dim=head_dim,
        intermediate_size=intermediate_size, vision_width=vision_width, vision_depth=vision_depth,
        image_size=image_size, patch_size=patch_size, mm_tokens_per_image=mm_tokens_per_image,
    )
    weights = random_vision_weights(config, seed, init_scale)
    weights.pop("language_model.lm_head.weight")  # tied: mlx-vlm's sanitize copies the embeddings back
    projector = "multi_modal_projector.mm_input_projection_weight"
    mx.random.seed(seed + 1)
    weights[projector] = mx.random.normal(weights[projector].shape) * (init_scale / vision_width**0.5)
    for name, value in weights.items():
        if any(part in name for part in LIVELIER_WEIGHTS):
            weights[name] = value * init_scale
    if quantize_bits:
        weights["language_model.lm_head.weight"] = weights["language_model.model.embed_tokens.weight"]
        weights = quantize_language_weights(weights, quantize_bits)
        config["quantization"] = config["quantization_config"] = {"group_size": 64, "bits": quantize_bits}
    write_json(path / "config.json", config)
    mx.save_safetensors(str(path / "model.safetensors"), weights, metadata={"format": "mlx"})
    return path
