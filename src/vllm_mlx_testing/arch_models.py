"""Tiny random-weight models of today's hybrid and sliding-window architectures.

``build_arch_model(path, arch)`` writes a model folder that loads through
mlx-lm's normal path (``mlx_lm.load(path)``, or ``mlx_lm.utils.load_model`` +
``load_tokenizer``): a ``config.json`` with the family's real HF field names
(tiny sizes), a float32 ``model.safetensors`` made by instantiating mlx-lm's
own ``mlx_lm.models.<arch>.Model`` after ``mx.random.seed(seed)`` (saved in
the form its ``sanitize`` leaves unchanged), a locally trained byte-level BPE
tokenizer with the family's special tokens, and the family's chat template
(``arch_templates``).  Every ``ARCHITECTURES`` model's ``make_prompt_cache`` holds
at least one cache that is not a plain ``KVCache``:

* ``qwen3_5`` -- ``Qwen3_5ForConditionalGeneration`` with the text config nested
  under ``text_config`` (``qwen3_5_text``, no vision tower): GatedDeltaNet
  linear-attention layers + a full-attention layer every
  ``full_attention_interval`` (``ArraysCache`` / ``KVCache``).  ChatML, thinking
  generation prompt, qwen3_coder XML tool calls.
* ``qwen3_next`` -- ``Qwen3NextForCausalLM``: the same layer mix, sparse MoE
  (4 tiny experts, 2 per token, a shared expert).  Qwen3 ChatML / Hermes tools.
* ``gemma3_text`` -- ``Gemma3ForCausalLM``: sliding-window layers
  (``RotatingKVCache``, ``sliding_window`` 16) and a global layer every
  ``sliding_window_pattern``; tied embeddings (no ``lm_head`` saved).
* ``gemma4_text`` -- ``Gemma4ForCausalLM``: alternating sliding / full layers,
  per-layer input embeddings and, from 4 layers on, KV sharing of the second
  half of the layers (as the E2B / E4B models), so ``make_prompt_cache`` has
  fewer entries than layers.  Gemma 4's own turn markers.
* ``gpt_oss`` -- ``GptOssForCausalLM``: alternating sliding (window 16) / full
  attention with sinks, tiny MoE (4 experts, 2 per token), YaRN rope.  Harmony.
* ``nemotron_h`` -- ``NemotronHForCausalLM``: ``hybrid_override_pattern`` of
  Mamba2 (``M``), MoE (``E``), attention (``*``) and MLP (``-``) blocks; only
  ``M`` and ``*`` blocks have caches.  ChatML + thinking + XML tool calls.
* ``falcon_h1`` -- ``FalconH1ForCausalLM``: every layer runs Mamba2 and
  attention in parallel (``CacheList(ArraysCache, KVCache)``).  ChatML.
* ``lfm2`` -- ``Lfm2ForCausalLM``: short-conv layers (``ArraysCache``) and
  attention layers (``layer_types``).  ``<|startoftext|>`` + ChatML, pythonic tools.

Three more (``MTP_ARCHITECTURES``) have only keys-and-values caches: full-attention
families whose checkpoints carry an MTP layer outside the model's (``add_mtp_head``
writes one in the family's layout):

* ``glm4_moe`` -- ``Glm4MoeForCausalLM`` (GLM-4.5/4.6/4.7): grouped-query attention
  with a key norm and partial RoPE, a dense first layer, then 4 tiny experts (2 per
  token) and a shared one.
* ``glm4_moe_lite`` -- ``Glm4MoeLiteForCausalLM`` (GLM-4.7-Flash): DeepSeek-V3's
  latent attention (its cache keeps the latent and the rotary key), the same experts.
  Both with GLM-4.5's format (``glm_template``).
* ``mimo`` -- ``MiMoForCausalLM`` (MiMo-7B): Qwen2-style dense layers.  Qwen's ChatML.

The tokenizers of the Gemma, LFM2 and Falcon-H1 families prepend their BOS on
``encode`` (as the real ones do) and the templates start with it too, so chat
prompts are encoded with ``add_special_tokens=False``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from .arch_templates import ARCH_TEMPLATES
from .tokenizer import FAMILY_BOS, FAMILY_TOKENS, train_tokenizer

ARCHITECTURES: tuple[str, ...] = (
    "qwen3_5", "qwen3_next", "gemma3_text", "gemma4_text", "gpt_oss", "nemotron_h", "falcon_h1", "lfm2",
)

# Full-attention families whose checkpoints carry a multi-token-prediction layer outside the model's:
# GLM-4.5/4.6/4.7 (``glm4_moe``) and GLM-4.7-Flash (``glm4_moe_lite``: DeepSeek-V3's latent attention),
# mixtures of experts, after the model's layers (DeepSeek-V3's layout); MiMo (``mimo``), dense, as
# ``model.mtp_layers``.
MTP_ARCHITECTURES: tuple[str, ...] = ("glm4_moe", "glm4_moe_lite", "mimo")

MAX_POSITION_EMBEDDINGS = 4096
SLIDING_WINDOW = 16

# Per arch: tokenizer family, template, EOS tokens (the end-of-turn one first),
# tokenizer_config ``eos_token``, BOS token (None: the family has none), pad token.
_TOKENS: dict[str, tuple[str, str, list[str], str, str | None, str]] = {
    "qwen3_5": ("qwen3", "qwen3_5", ["<|im_end|>", "<|endoftext|>"], "<|im_end|>", None, "<|endoftext|>"),
    "qwen3_next": ("qwen3", "qwen3", ["<|im_end|>", "<|endoftext|>"], "<|im_end|>", None, "<|endoftext|>"),
    "gemma3_text": ("gemma3", "gemma3", ["<end_of_turn>", "<eos>"], "<eos>", "<bos>", "<pad>"),
    "gemma4_text": ("gemma4", "gemma4", ["<turn|>", "<eos>", "<|tool_response>"], "<eos>", "<bos>", "<pad>"),
    "gpt_oss": ("harmony", "harmony", ["<|return|>", "<|call|>", "<|endoftext|>"], "<|return|>",
                "<|startoftext|>", "<|endoftext|>"),
    "nemotron_h": ("nemotron_h", "nemotron_h", ["<|im_end|>", "</s>"], "<|im_end|>", "<s>", "<unk>"),
    "falcon_h1": ("falcon_h1", "falcon_h1", ["<|im_end|>", "<|end_of_text|>"], "<|im_end|>",
                  "<|begin_of_text|>", "<|pad|>"),
    "lfm2": ("lfm2", "lfm2", ["<|im_end|>", "<|endoftext|>"], "<|im_end|>", "<|startoftext|>", "<|pad|>"),
    "glm4_moe": ("glm4", "glm45", ["<|user|>", "<|observation|>", "<|endoftext|>"], "<|endoftext|>", None,
                 "<|endoftext|>"),
    "glm4_moe_lite": ("glm4", "glm45", ["<|user|>", "<|observation|>", "<|endoftext|>"], "<|endoftext|>", None,
                      "<|endoftext|>"),
    "mimo": ("qwen3", "qwen3", ["<|im_end|>", "<|endoftext|>"], "<|im_end|>", None, "<|endoftext|>"),
}

_DEFAULT_LAYERS = {"falcon_h1": 2}


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _common(ids: dict[str, Any], vocab_size: int, n: int) -> dict[str, Any]:
    return {
        "bos_token_id": ids["bos_token_id"],
        "eos_token_id": ids["eos_token_id"],
        "pad_token_id": ids["pad_token_id"],
        "hidden_size": 64,
        "initializer_range": 0.02,
        "max_position_embeddings": MAX_POSITION_EMBEDDINGS,
        "num_hidden_layers": n,
        "torch_dtype": "float32",
        "transformers_version": "4.57.0",
        "use_cache": True,
        "vocab_size": vocab_size,
    }


def _every(n: int, period: int, hit: str, miss: str) -> list[str]:
    """Layer kinds: ``hit`` on every ``period``-th layer (at least once), else ``miss``."""
    kinds = [hit if (i + 1) % period == 0 else miss for i in range(n)]
    if hit not in kinds:
        kinds[-1] = hit
    return kinds


def _gated_delta(n: int) -> dict[str, Any]:
    interval = max(2, min(4, n))
    return {
        "attention_bias": False,
        "attention_dropout": 0.0,
        "full_attention_interval": interval,
        "head_dim": 16,
        "hidden_act": "silu",
        "intermediate_size": 128,
        "layer_types": _every(n, interval, "full_attention", "linear_attention"),
        "linear_conv_kernel_dim": 4,
        "linear_key_head_dim": 16,
        "linear_num_key_heads": 2,
        "linear_num_value_heads": 4,
        "linear_value_head_dim": 16,
        "mlp_only_layers": [],
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False,
    }


def _qwen3_5(c: dict, n: int) -> dict:
    text = {**c, **_gated_delta(n), "attn_output_gate": True, "model_type": "qwen3_5_text",
            "mtp_num_hidden_layers": 0,
            "rope_parameters": {"mrope_interleaved": True, "mrope_section": [1, 1, 0], "partial_rotary_factor": 0.25,
                                "rope_theta": 10000000, "rope_type": "default"}}
    return {"architectures": ["Qwen3_5ForConditionalGeneration"], "model_type": "qwen3_5", "text_config": text,
            "eos_token_id": c["eos_token_id"], "max_position_embeddings": c["max_position_embeddings"],
            "tie_word_embeddings": False, "torch_dtype": "float32", "transformers_version": "4.57.0"}


def _qwen3_next(c: dict, n: int) -> dict:
    return {"architectures": ["Qwen3NextForCausalLM"], "model_type": "qwen3_next", **c, **_gated_delta(n),
            "decoder_sparse_step": 1, "moe_intermediate_size": 32, "norm_topk_prob": True, "num_experts": 4,
            "num_experts_per_tok": 2, "output_router_logits": False, "partial_rotary_factor": 0.25,
            "rope_scaling": None, "rope_theta": 10000000.0, "router_aux_loss_coef": 0.001,
            "shared_expert_intermediate_size": 32, "use_sliding_window": False}


def _gemma3_text(c: dict, n: int) -> dict:
    pattern = max(2, min(4, n))
    return {"architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", **c,
            "attention_bias": False, "attention_dropout": 0.0, "attn_logit_softcapping": None,
            "cache_implementation": "hybrid", "final_logit_softcapping": None, "head_dim": 16,
            "hidden_activation": "gelu_pytorch_tanh", "intermediate_size": 128,
            "layer_types": _every(n, pattern, "full_attention", "sliding_attention"),
            "num_attention_heads": 4, "num_key_value_heads": 1, "query_pre_attn_scalar": 16, "rms_norm_eps": 1e-6,
            "rope_local_base_freq": 10000.0, "rope_scaling": None, "rope_theta": 1000000.0,
            "sliding_window": SLIDING_WINDOW, "sliding_window_pattern": pattern}


def _gemma4_text(c: dict, n: int) -> dict:
    return {"architectures": ["Gemma4ForCausalLM"], "model_type": "gemma4_text", **c,
            "attention_bias": False, "attention_dropout": 0.0, "attention_k_eq_v": False, "enable_moe_block": False,
            "final_logit_softcapping": 30.0, "global_head_dim": 32, "head_dim": 16,
            "hidden_activation": "gelu_pytorch_tanh", "hidden_size_per_layer_input": 16, "intermediate_size": 128,
            "layer_types": _every(n, 2, "full_attention", "sliding_attention"),
            "num_attention_heads": 4, "num_global_key_value_heads": None, "num_key_value_heads": 1,
            "num_kv_shared_layers": n // 2 if n >= 4 else 0, "rms_norm_eps": 1e-6,
            "rope_parameters": {
                "full_attention": {"partial_rotary_factor": 0.25, "rope_theta": 1000000.0,
                                   "rope_type": "proportional"},
                "sliding_attention": {"rope_theta": 10000.0, "rope_type": "default"}},
            "sliding_window": SLIDING_WINDOW, "tie_word_embeddings": True, "use_double_wide_mlp": True,
            "vocab_size_per_layer_input": c["vocab_size"]}


def _gpt_oss(c: dict, n: int) -> dict:
    c = {k: v for k, v in c.items() if k != "bos_token_id"}
    c["eos_token_id"] = c["eos_token_id"][0]
    return {"architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss", **c,
            "attention_bias": True, "attention_dropout": 0.0, "experts_per_token": 2, "head_dim": 16,
            "hidden_act": "silu", "initial_context_length": 128, "intermediate_size": 64,
            "layer_types": ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n)],
            "num_attention_heads": 4, "num_experts_per_tok": 2, "num_key_value_heads": 2, "num_local_experts": 4,
            "output_router_logits": False, "rms_norm_eps": 1e-5,
            "rope_scaling": {"beta_fast": 32.0, "beta_slow": 1.0, "factor": 32.0,
                             "original_max_position_embeddings": 128, "rope_type": "yarn", "truncate": False},
            "rope_theta": 150000, "router_aux_loss_coef": 0.9, "sliding_window": SLIDING_WINDOW,
            "swiglu_limit": 7.0, "tie_word_embeddings": False}


def _nemotron_pattern(n: int) -> str:
    return "M*" if n == 2 else ("ME*-" * n)[:n]


def _nemotron_h(c: dict, n: int) -> dict:
    return {"architectures": ["NemotronHForCausalLM"], "model_type": "nemotron_h", **c,
            "attention_bias": False, "attention_dropout": 0.0, "chunk_size": 128, "conv_kernel": 4, "head_dim": 16,
            "hidden_dropout": 0.0, "hybrid_override_pattern": _nemotron_pattern(n), "intermediate_size": 128,
            "layer_norm_epsilon": 1e-5, "mamba_head_dim": 16, "mamba_hidden_act": "silu", "mamba_num_heads": 8,
            "mamba_proj_bias": False, "mlp_bias": False, "mlp_hidden_act": "relu2", "moe_intermediate_size": 32,
            "moe_shared_expert_intermediate_size": 32, "n_group": 1, "n_groups": 2, "n_routed_experts": 4,
            "n_shared_experts": 1, "norm_topk_prob": True, "num_attention_heads": 4, "num_experts_per_tok": 2,
            "num_key_value_heads": 2, "rescale_prenorm_residual": True, "residual_in_fp32": False,
            "rms_norm_eps": 1e-5, "routed_scaling_factor": 2.5, "sliding_window": None, "ssm_state_size": 16,
            "tie_word_embeddings": False, "time_step_floor": 0.0001, "time_step_max": 0.1, "time_step_min": 0.001,
            "topk_group": 1, "use_bias": False, "use_conv_bias": True, "use_mamba_kernels": True}


def _falcon_h1(c: dict, n: int) -> dict:
    return {"architectures": ["FalconH1ForCausalLM"], "model_type": "falcon_h1", **c,
            "attention_bias": False, "attention_dropout": 0.0, "attention_in_multiplier": 1.0,
            "attention_out_multiplier": 0.9375, "attn_layer_indices": None,
            "embedding_multiplier": 5.656854249492381, "head_dim": 16, "hidden_act": "silu",
            "intermediate_size": 128, "key_multiplier": 0.390625, "lm_head_multiplier": 0.0390625,
            "mamba_chunk_size": 128, "mamba_conv_bias": True, "mamba_d_conv": 4, "mamba_d_head": 16,
            "mamba_d_ssm": 128, "mamba_d_state": 16, "mamba_expand": 2, "mamba_n_groups": 1, "mamba_n_heads": 8,
            "mamba_norm_before_gate": False, "mamba_proj_bias": False, "mamba_rms_norm": False,
            "mamba_use_mlp": True, "mlp_bias": False, "mlp_expansion_factor": 8,
            "mlp_multipliers": [0.8838834764831844, 0.5859375], "num_attention_heads": 4,
            "num_key_value_heads": 2, "num_logits_to_keep": 1, "projectors_bias": False, "rms_norm_eps": 1e-5,
            "rope_scaling": None, "rope_theta": 100000000000.0, "ssm_in_multiplier": 1.25,
            "ssm_multipliers": [0.3535533905932738, 0.25, 0.3535533905932738, 0.5, 0.3535533905932738],
            "ssm_out_multiplier": 0.23570226039551587, "tie_word_embeddings": False}


def _lfm2(c: dict, n: int) -> dict:
    kinds = _every(n, 3, "full_attention", "conv")
    return {"architectures": ["Lfm2ForCausalLM"], "model_type": "lfm2", **c,
            "block_auto_adjust_ff_dim": True, "block_dim": 64, "block_ff_dim": 192, "block_ffn_dim_multiplier": 1.0,
            "block_mlp_init_scale": 1.0, "block_multiple_of": 32, "block_norm_eps": 1e-5,
            "block_out_init_scale": 1.0, "block_use_swiglu": True, "block_use_xavier_init": True,
            "conv_L_cache": 3, "conv_bias": False, "conv_dim": 64, "conv_dim_out": 64, "conv_use_xavier_init": True,
            "full_attn_idxs": [i for i, k in enumerate(kinds) if k == "full_attention"], "intermediate_size": 192,
            "layer_types": kinds, "norm_eps": 1e-5, "num_attention_heads": 4, "num_heads": 4,
            "num_key_value_heads": 2, "rope_theta": 1000000.0, "tie_embedding": True, "use_pos_enc": True}


def _experts() -> dict[str, Any]:
    """The mixture-of-experts fields GLM-4.5 and DeepSeek-V3 share: a dense first layer, then four
    routed experts (two per token) and a shared one, sigmoid scores with group routing, and the
    multi-token-prediction layer their checkpoints carry."""
    return {"first_k_dense_replace": 1, "intermediate_size": 128, "moe_intermediate_size": 32, "n_group": 1,
            "n_routed_experts": 4, "n_shared_experts": 1, "norm_topk_prob": True, "num_experts_per_tok": 2,
            "num_nextn_predict_layers": 1, "routed_scaling_factor": 1.5, "scoring_func": "sigmoid",
            "tie_word_embeddings": False, "topk_group": 1, "topk_method": "noaux_tc"}


def _glm4_moe(c: dict, n: int) -> dict:
    return {"architectures": ["Glm4MoeForCausalLM"], "model_type": "glm4_moe", **c, **_experts(),
            "attention_bias": True, "head_dim": 16, "num_attention_heads": 4, "num_key_value_heads": 2,
            "partial_rotary_factor": 0.5, "rms_norm_eps": 1e-5, "rope_scaling": None, "rope_theta": 1000000.0,
            "use_qk_norm": True}


def _glm4_moe_lite(c: dict, n: int) -> dict:
    return {"architectures": ["Glm4MoeLiteForCausalLM"], "model_type": "glm4_moe_lite", **c, **_experts(),
            "attention_bias": False, "kv_lora_rank": 32, "num_attention_heads": 4, "num_key_value_heads": 4,
            "q_lora_rank": 48, "qk_nope_head_dim": 16, "qk_rope_head_dim": 16, "rms_norm_eps": 1e-5,
            "rope_theta": 1000000.0, "v_head_dim": 16}


def _mimo(c: dict, n: int) -> dict:
    return {"architectures": ["MiMoForCausalLM"], "model_type": "mimo", **c, "hidden_act": "silu",
            "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2, "num_nextn_predict_layers": 1,
            "rms_norm_eps": 1e-5, "rope_theta": 640000.0, "tie_word_embeddings": False}


_CONFIGS: dict[str, Callable[[dict, int], dict]] = {
    "qwen3_5": _qwen3_5, "qwen3_next": _qwen3_next, "gemma3_text": _gemma3_text, "gemma4_text": _gemma4_text,
    "gpt_oss": _gpt_oss, "nemotron_h": _nemotron_h, "falcon_h1": _falcon_h1, "lfm2": _lfm2,
    "glm4_moe": _glm4_moe, "glm4_moe_lite": _glm4_moe_lite, "mimo": _mimo,
}


def _check_arch(arch: str) -> None:
    if arch not in _CONFIGS:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {list(_CONFIGS)}")


def arch_token_ids(arch: str, vocab_size: int = 1024) -> dict[str, Any]:
    """EOS ids (end of turn first), BOS id (None without one) and pad id of ``arch``'s tokenizer."""
    _check_arch(arch)
    family, _, eos, _, bos, pad = _TOKENS[arch]
    tok = train_tokenizer(family, vocab_size)
    return {
        "eos_token_id": [tok.token_to_id(t) for t in eos],
        "bos_token_id": tok.token_to_id(bos) if bos else None,
        "pad_token_id": tok.token_to_id(pad),
    }


def arch_config(arch: str, *, vocab_size: int = 1024, num_hidden_layers: int | None = None) -> dict[str, Any]:
    """The HF ``config.json`` contents of the tiny ``arch`` model."""
    _check_arch(arch)
    n = num_hidden_layers or _DEFAULT_LAYERS.get(arch, 4)
    if n < 2 and arch != "falcon_h1":
        raise ValueError(f"{arch} needs at least 2 layers to mix layer kinds")
    common = _common(arch_token_ids(arch, vocab_size), vocab_size, n)
    return _CONFIGS[arch](common, n)


def _write_tokenizer(path: Path, arch: str, vocab_size: int, ids: dict[str, Any]) -> None:
    family, template, eos, eos_token, bos, pad = _TOKENS[arch]
    tok = train_tokenizer(family, vocab_size)
    tok.save(str(path / "tokenizer.json"))
    added = {
        str(tok.token_to_id(content)): {"content": content, "lstrip": False, "normalized": False, "rstrip": False,
                                        "single_word": False, "special": special}
        for content, special in FAMILY_TOKENS[family]
    }
    config = {
        "add_bos_token": family in FAMILY_BOS,
        "add_eos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        "bos_token": bos,
        "chat_template": ARCH_TEMPLATES[template],
        "clean_up_tokenization_spaces": False,
        "eos_token": eos_token,
        "errors": "replace",
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": MAX_POSITION_EMBEDDINGS,
        "pad_token": pad,
        "split_special_tokens": False,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": None,
    }
    _write_json(path / "tokenizer_config.json", config)
    special_map = {"eos_token": eos_token, "pad_token": pad,
                   "additional_special_tokens": [t for t, special in FAMILY_TOKENS[family] if special]}
    if bos:
        special_map["bos_token"] = bos
    _write_json(path / "special_tokens_map.json", special_map)
    generation = {"bos_token_id": ids["bos_token_id"], "do_sample": True, "eos_token_id": ids["eos_token_id"],
                  "pad_token_id": ids["pad_token_id"], "temperature": 0.7, "top_p": 0.95,
                  "transformers_version": "4.57.0"}
    _write_json(path / "generation_config.json", {k: v for k, v in generation.items() if v is not None})


def _random_weights(config: dict[str, Any], seed: int) -> dict:
    """mlx-lm's own model for ``config`` after ``mx.random.seed(seed)``: its
    float32 parameters, named as its loader wants them (``sanitize`` keeps them)."""
    import importlib

    import mlx.core as mx
    from mlx.utils import tree_flatten

    arch = importlib.import_module(f"mlx_lm.models.{config['model_type']}")
    mx.random.seed(seed)
    model = arch.Model(arch.ModelArgs.from_dict(config))
    weights = {k: v.astype(mx.float32) for k, v in tree_flatten(model.parameters())}
    if config["model_type"] == "gemma3_text":
        weights.pop("lm_head.weight")  # tied, as in the real checkpoints (sanitize then drops lm_head)
    zero_routers = (".mixer.gate.weight", ".mlp.gate.weight") if config["model_type"] in MTP_ARCHITECTURES else (
        ".mixer.gate.weight",)
    for name in [k for k in weights if k.endswith(zero_routers)]:
        # MoE routers that start at zero (nemotron_h's, GLM's): random scores, so tokens pick different experts
        weights[name] = 0.1 * mx.random.normal(weights[name].shape, dtype=mx.float32)
    mx.eval(weights)
    shapes = {k: v.shape for k, v in weights.items()}
    after = model.sanitize(dict(weights))
    if {k: v.shape for k, v in after.items()} != shapes:
        raise AssertionError(f"{config['model_type']}: saved weights do not round-trip through sanitize")
    return weights


def build_arch_model(
    path: str | Path,
    arch: str,
    *,
    seed: int = 0,
    vocab_size: int = 1024,
    num_hidden_layers: int | None = None,
    overrides: dict[str, Any] | None = None,
) -> Path:
    """Write the tiny random ``arch`` model folder at ``path`` (one of
    ``ARCHITECTURES``) and return it.  The same arguments always give the same
    files.  ``num_hidden_layers`` overrides the default layer count (4; 2 for
    ``falcon_h1``) -- the layer pattern is then stretched so that every layer
    kind is still present.  ``overrides`` replaces language-model config fields
    (e.g. ``hidden_size`` for a bigger benchmark model)."""
    import mlx.core as mx

    _check_arch(arch)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    ids = arch_token_ids(arch, vocab_size)
    _write_tokenizer(path, arch, vocab_size, ids)
    config = arch_config(arch, vocab_size=vocab_size, num_hidden_layers=num_hidden_layers)
    (config.get("text_config") or config).update(overrides or {})
    _write_json(path / "config.json", config)
    weights = _random_weights(config, seed)
    mx.save_safetensors(str(path / "model.safetensors"), weights, metadata={"format": "mlx"})
    return path
