"""A tiny, real Qwen3.5 vision-language folder built offline (the layout of Qwen3.5-4B/9B).

Qwen3.5 checkpoints are vision-language models: ``config.json`` has ``model_type: qwen3_5``, a
``text_config`` whose decoder mixes Gated DeltaNet (linear-attention) layers with full-attention
layers (every ``full_attention_interval``-th layer), and a ``vision_config`` (the Qwen3-VL vision
tower, without deepstack); the weights hold ``vision_tower.*`` beside ``language_model.*``.

The folder built here is what an MLX conversion of such a checkpoint holds, so both loaders take it:

* ``mlx_vlm.load(path)`` -- the whole model (mlx-vlm's ``qwen3_5`` classes made the weights);
* ``mlx_lm.load(path)`` -- the language model only, as text (mlx-lm's ``qwen3_5`` drops the
  ``vision_tower.*`` weights and reads ``text_config``).

Weights are saved under mlx-vlm's module names with the Conv1d kernels already in MLX layout and
the RMSNorm weights as the model uses them, which both loaders read without conversion. The
tokenizer is the locally trained qwen3-family BPE plus the vision tokens, with a ChatML "thinking"
chat template written for this project: the generation prompt opens a ``<think>`` block (closed
empty with ``enable_thinking=false``), tools are offered as JSON inside ``<tools>`` and called in
the qwen3_coder XML form (``<function=NAME><parameter=ARG>``), images and videos render as
``<|vision_start|><|image_pad|><|vision_end|>`` / ``...<|video_pad|>...``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vllm_mlx.models.demo.builder import QWEN3, write_generation_config

from .vision_models import random_vision_weights, write_json, write_processor_configs, write_vision_tokenizer

ARCHITECTURES = {"qwen3_5": "Qwen3_5ForConditionalGeneration", "qwen3_5_moe": "Qwen3_5MoeForConditionalGeneration"}
# Scaled by ``init_scale`` besides the embeddings and MLPs: the outputs of attention and Gated
# DeltaNet layers (and the head), so the image and the earlier text change the greedy output.
LIVELIER_WEIGHTS = ("self_attn.v_proj", "self_attn.o_proj", "linear_attn.in_proj_z", "linear_attn.out_proj",
                    "lm_head")

# ChatML with thinking, qwen3_coder XML tool calls and media parts. ``content`` may be a string,
# None or a list of parts ({"type": "text"|"image"|"image_url"|"video"|"video_url", ...}).
QWEN35_CHAT_TEMPLATE = """\
{%- macro render(content) -%}
{%- if content is none -%}
{%- elif content is string -%}{{- content -}}
{%- else -%}
{%- for part in content -%}
{%- if part is string -%}{{- part -}}
{%- elif part is mapping and part.get('type') in ('image', 'image_url', 'input_image') -%}
{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}
{%- elif part is mapping and part.get('type') in ('video', 'video_url', 'input_video') -%}
{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}
{%- elif part is mapping and part.get('type', 'text') == 'text' -%}{{- part.get('text') or '' -}}
{%- endif -%}
{%- endfor -%}
{%- endif -%}
{%- endmacro -%}
{%- macro argument_text(value) -%}
{%- if value is string -%}{{- value -}}{%- else -%}{{- value | tojson -}}{%- endif -%}
{%- endmacro -%}
{%- set system_first = messages and messages[0].role == 'system' -%}
{%- if tools -%}
{{- '<|im_start|>system\\n' -}}
{%- if system_first -%}{{- render(messages[0].content) + '\\n\\n' -}}{%- endif -%}
{{- '# Tools\\n\\nThese functions are available:\\n\\n<tools>' -}}
{%- for tool in tools -%}{{- '\\n' + ((tool.function if tool.function is defined else tool) | tojson) -}}{%- endfor -%}
{{- '\\n</tools>\\n\\nTo call one, reply with this block and nothing after it:\\n\\n' -}}
{{- '<tool_call>\\n<function=NAME>\\n<parameter=ARGUMENT>\\nVALUE\\n</parameter>\\n</function>\\n</tool_call><|im_end|>\\n' -}}
{%- elif system_first -%}
{{- '<|im_start|>system\\n' + render(messages[0].content) + '<|im_end|>\\n' -}}
{%- endif -%}
{%- set state = namespace(last_user=-1) -%}
{%- for m in messages -%}
{%- if m.role == 'user' -%}{%- set state.last_user = loop.index0 -%}{%- endif -%}
{%- endfor -%}
{%- for m in messages -%}
{%- if m.role == 'system' and loop.first -%}
{%- elif m.role == 'user' or m.role == 'system' -%}
{{- '<|im_start|>' + m.role + '\\n' + render(m.content) + '<|im_end|>\\n' -}}
{%- elif m.role == 'assistant' -%}
{%- set text = render(m.content) -%}
{%- set thought = m.reasoning_content or '' -%}
{%- if '</think>' in text -%}
{%- if not thought -%}{%- set thought = text.split('</think>')[0].split('<think>')[-1] -%}{%- endif -%}
{%- set text = text.split('</think>')[-1].lstrip('\\n') -%}
{%- endif -%}
{{- '<|im_start|>assistant\\n' -}}
{%- if loop.index0 > state.last_user and thought -%}
{{- '<think>\\n' + thought.strip('\\n') + '\\n</think>\\n\\n' -}}
{%- endif -%}
{{- text -}}
{%- for call in m.tool_calls or [] -%}
{%- set fn = call.function if call.function is defined else call -%}
{%- if text or not loop.first -%}{{- '\\n' -}}{%- endif -%}
{{- '<tool_call>\\n<function=' + fn.name + '>\\n' -}}
{%- set args = fn.arguments -%}
{%- if args is mapping -%}
{%- for key, value in args.items() -%}
{{- '<parameter=' + key + '>\\n' + argument_text(value) + '\\n</parameter>\\n' -}}
{%- endfor -%}
{%- elif args -%}{{- args + '\\n' -}}
{%- endif -%}
{{- '</function>\\n</tool_call>' -}}
{%- endfor -%}
{{- '<|im_end|>\\n' -}}
{%- elif m.role == 'tool' -%}
{%- if loop.first or messages[loop.index0 - 1].role != 'tool' -%}{{- '<|im_start|>user' -}}{%- endif -%}
{{- '\\n<tool_response>\\n' + render(m.content) + '\\n</tool_response>' -}}
{%- if loop.last or messages[loop.index0 + 1].role != 'tool' -%}{{- '<|im_end|>\\n' -}}{%- endif -%}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{- '<|im_start|>assistant\\n<think>\\n' -}}
{%- if enable_thinking is defined and not enable_thinking -%}{{- '\\n</think>\\n\\n' -}}{%- endif -%}
{%- endif -%}
"""


def qwen35_config(ids: dict[str, Any], *, vocab_size: int, hidden_size: int, num_hidden_layers: int,
                  full_attention_interval: int, num_attention_heads: int, num_key_value_heads: int,
                  head_dim: int, intermediate_size: int, linear_heads: tuple[int, int], linear_head_dim: int,
                  vision_width: int, vision_depth: int, num_experts: int = 0) -> dict[str, Any]:
    """``config.json`` in the Hugging Face layout of Qwen3.5 (``text_config`` + ``vision_config``);
    with ``num_experts`` the MoE variant (``qwen3_5_moe``: routed experts plus a shared expert)."""
    model_type = "qwen3_5_moe" if num_experts else "qwen3_5"
    rotary_half = int(head_dim * 0.25) // 2  # partial rotary: a quarter of each head is rotated
    section = [rotary_half - 2 * (rotary_half // 3), rotary_half // 3, rotary_half // 3]
    layer_types = ["full_attention" if (i + 1) % full_attention_interval == 0 else "linear_attention"
                   for i in range(num_hidden_layers)]
    v = ids["vision"]
    key_heads, value_heads = linear_heads
    text = {
        "model_type": f"{model_type}_text", "hidden_size": hidden_size, "intermediate_size": intermediate_size,
        "num_hidden_layers": num_hidden_layers, "layer_types": layer_types,
        "full_attention_interval": full_attention_interval,
        "num_attention_heads": num_attention_heads, "num_key_value_heads": num_key_value_heads,
        "head_dim": head_dim, "attn_output_gate": True, "attention_bias": False,
        "linear_num_key_heads": key_heads, "linear_num_value_heads": value_heads,
        "linear_key_head_dim": linear_head_dim, "linear_value_head_dim": linear_head_dim,
        "linear_conv_kernel_dim": 4, "hidden_act": "silu", "rms_norm_eps": 1e-6, "vocab_size": vocab_size,
        "max_position_embeddings": 4096, "tie_word_embeddings": False, "eos_token_id": ids["eos_token_id"][0],
        "rope_parameters": {"rope_type": "default", "rope_theta": 10_000_000.0, "partial_rotary_factor": 0.25,
                            "mrope_section": section, "mrope_interleaved": True},
        "mtp_num_hidden_layers": 0,
    }
    if num_experts:
        text |= {"num_experts": num_experts, "num_experts_per_tok": 2, "moe_intermediate_size": intermediate_size // 2,
                 "shared_expert_intermediate_size": intermediate_size // 2, "norm_topk_prob": True,
                 "decoder_sparse_step": 1, "mlp_only_layers": []}
    vision = {
        "model_type": model_type, "depth": vision_depth, "hidden_size": vision_width,
        "intermediate_size": 2 * vision_width, "out_hidden_size": hidden_size, "num_heads": 2,
        "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2, "in_channels": 3,
        "num_position_embeddings": 64, "deepstack_visual_indexes": [], "hidden_act": "gelu_pytorch_tanh",
    }
    return {
        "architectures": [ARCHITECTURES[model_type]], "model_type": model_type, "torch_dtype": "float32",
        "text_config": text, "vision_config": vision, "tie_word_embeddings": False,
        "image_token_id": v["<|image_pad|>"], "video_token_id": v["<|video_pad|>"],
        "vision_start_token_id": v["<|vision_start|>"], "vision_end_token_id": v["<|vision_end|>"],
        "eos_token_id": ids["eos_token_id"], "bos_token_id": ids["bos_token_id"],
        "vocab_size": vocab_size, "transformers_version": "4.57.0",
    }


def quantize_language_weights(weights: dict, bits: int, group_size: int = 64) -> dict:
    """Affine-quantize the language model's matrices (embeddings and linear layers) the way an MLX
    4-/8-bit conversion stores them (``weight``, ``scales``, ``biases``); the vision tower, the
    Conv1d kernels and the norms stay as they are. Both loaders quantize exactly the modules whose
    ``scales`` are present."""
    import mlx.core as mx

    out = {}
    for name, value in weights.items():
        if name.startswith("language_model.") and name.endswith(".weight") and value.ndim == 2 \
                and "conv1d" not in name and value.shape[-1] % group_size == 0:
            stem = name[: -len("weight")]
            out[name], out[stem + "scales"], out[stem + "biases"] = mx.quantize(value, group_size=group_size, bits=bits)
        else:
            out[name] = value
    return out


def _use_qwen35_template(path: Path) -> None:
    """Put the Qwen3.5 template where tokenizers and processors look for it."""
    config_file = path / "tokenizer_config.json"
    tokenizer_config = json.loads(config_file.read_text())
    tokenizer_config["chat_template"] = QWEN35_CHAT_TEMPLATE
    write_json(config_file, tokenizer_config)
    write_json(path / "chat_template.json", {"chat_template": QWEN35_CHAT_TEMPLATE})


def build_tiny_qwen35_vision_model(
    path: str | Path,
    *,
    vocab_size: int = 2048,
    hidden_size: int = 64,
    num_hidden_layers: int = 4,
    full_attention_interval: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    head_dim: int = 32,
    intermediate_size: int = 128,
    linear_heads: tuple[int, int] = (2, 4),
    linear_head_dim: int = 16,
    vision_width: int = 32,
    vision_depth: int = 1,
    min_pixels: int = 32 * 32,
    max_pixels: int = 128 * 128,
    num_experts: int = 0,
    quantize_bits: int | None = None,
    seed: int = 0,
    init_scale: float = 3.0,
) -> Path:
    """Write a tiny random Qwen3.5 vision-language folder at ``path`` (see the module docstring).

    With the defaults the decoder has four layers, Gated DeltaNet / full attention alternating
    (``full_attention_interval=2``); ``linear_heads`` is (key heads, value heads) of the Gated
    DeltaNet layers; ``num_experts`` > 0 builds the MoE variant (``qwen3_5_moe``, every MLP a
    sparse MoE block of that many experts, two per token); ``quantize_bits`` (4 or 8) stores the
    language model quantized like the 4-/8-bit MLX conversions (see ``quantize_language_weights``).
    A 128x128 image is 8x8 patches of 16 pixels = 16 image tokens.
    ``init_scale`` multiplies the token embeddings, MLP weights and ``LIVELIER_WEIGHTS`` so greedy
    output varies token by token and with the image and the text before it.
    """
    import mlx.core as mx

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    ids = write_vision_tokenizer(path, vocab_size)
    _use_qwen35_template(path)
    write_generation_config(path, QWEN3, ids)
    write_processor_configs(path, "qwen3_vl", min_pixels=min_pixels, max_pixels=max_pixels)
    config = qwen35_config(
        ids, vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
        full_attention_interval=full_attention_interval, num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads, head_dim=head_dim, intermediate_size=intermediate_size,
        linear_heads=linear_heads, linear_head_dim=linear_head_dim, vision_width=vision_width,
        vision_depth=vision_depth, num_experts=num_experts,
    )
    weights = random_vision_weights(config, seed, init_scale)
    for name, value in weights.items():  # context reaches the last position only through these
        if any(part in name for part in LIVELIER_WEIGHTS):
            weights[name] = value * init_scale
    if quantize_bits:
        weights = quantize_language_weights(weights, quantize_bits)
        config["quantization"] = config["quantization_config"] = {"group_size": 64, "bits": quantize_bits}
    write_json(path / "config.json", config)
    mx.save_safetensors(str(path / "model.safetensors"), weights, metadata={"format": "mlx"})
    return path
