"""Builders of tiny, real, HF-style model folders.

The folders load through mlx-lm's normal path (``mlx_lm.load(path)``, or
``mlx_lm.utils.load_model`` + ``load_tokenizer``): a ``config.json`` with the
architecture's real HF field names, ``model.safetensors``, and the tokenizer
files (``tokenizer.json``, ``tokenizer_config.json`` with the chat template,
``special_tokens_map.json``) plus ``generation_config.json``.

Families:

* ``"qwen3"`` -- ``model_type: qwen3`` (``Qwen3ForCausalLM``), ChatML
  template, EOS ``<|im_end|>`` (and ``<|endoftext|>``), no BOS.
* ``"llama"`` -- ``model_type: llama`` (``LlamaForCausalLM``, Llama 3.1
  style with ``llama3`` rope scaling and an untied ``lm_head``), EOS
  ``<|eot_id|>`` (and ``<|end_of_text|>``), BOS ``<|begin_of_text|>``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from .chat_templates import chat_template_for
from .tokenizer import FAMILY_TOKENS, train_tokenizer

MAX_POSITION_EMBEDDINGS = 4096

# Per family: (eos tokens, first is the chat EOS; bos token or None; pad token).
FAMILY_SPECS: dict[str, dict[str, Any]] = {
    "qwen3": {
        "eos": ["<|im_end|>", "<|endoftext|>"],
        "bos": None,
        "bos_id_token": "<|endoftext|>",  # Qwen configs name it, the tokenizer has none
        "pad": "<|endoftext|>",
        "assistant_marker": "<|im_start|>assistant",
    },
    "llama": {
        "eos": ["<|eot_id|>", "<|end_of_text|>"],
        "bos": "<|begin_of_text|>",
        "bos_id_token": "<|begin_of_text|>",
        "pad": "<|end_of_text|>",
        "assistant_marker": "<|start_header_id|>assistant<|end_header_id|>",
    },
}


def _check_family(family: str) -> dict[str, Any]:
    if family not in FAMILY_SPECS:
        raise ValueError(f"unknown family {family!r}; expected one of {sorted(FAMILY_SPECS)}")
    return FAMILY_SPECS[family]


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def family_token_ids(family: str, vocab_size: int) -> dict[str, Any]:
    """EOS ids (chat EOS first), BOS id and pad id of ``family``'s tokenizer."""
    spec = _check_family(family)
    tok = train_tokenizer(family, vocab_size)
    return {
        "eos_token_id": [tok.token_to_id(t) for t in spec["eos"]],
        "bos_token_id": tok.token_to_id(spec["bos_id_token"]),
        "pad_token_id": tok.token_to_id(spec["pad"]),
    }


def write_tokenizer_files(path: Path, family: str, vocab_size: int) -> dict[str, Any]:
    """Write ``tokenizer.json``, ``tokenizer_config.json`` and
    ``special_tokens_map.json`` for ``family``; returns the token ids."""
    spec = _check_family(family)
    tok = train_tokenizer(family, vocab_size)
    tok.save(str(path / "tokenizer.json"))
    ids = family_token_ids(family, vocab_size)
    added = {
        str(tok.token_to_id(content)): {
            "content": content,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": special,
        }
        for content, special in FAMILY_TOKENS[family]
    }
    config: dict[str, Any] = {
        "add_bos_token": spec["bos"] is not None,
        "add_eos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        "bos_token": spec["bos"],
        "chat_template": chat_template_for(family),
        "clean_up_tokenization_spaces": False,
        "eos_token": spec["eos"][0],
        "errors": "replace",
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": MAX_POSITION_EMBEDDINGS,
        "pad_token": spec["pad"],
        "split_special_tokens": False,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": None,
    }
    _write_json(path / "tokenizer_config.json", config)
    special_map: dict[str, Any] = {"eos_token": spec["eos"][0], "pad_token": spec["pad"]}
    if spec["bos"] is not None:
        special_map["bos_token"] = spec["bos"]
    if family == "qwen3":
        special_map["additional_special_tokens"] = [
            t for t, special in FAMILY_TOKENS[family] if special
        ]
    _write_json(path / "special_tokens_map.json", special_map)
    return ids


def write_generation_config(path: Path, family: str, ids: dict[str, Any]) -> None:
    sampling = (
        {"temperature": 0.6, "top_k": 20, "top_p": 0.95}
        if family == "qwen3"
        else {"temperature": 0.6, "top_p": 0.9}
    )
    _write_json(
        path / "generation_config.json",
        {
            "bos_token_id": ids["bos_token_id"],
            "do_sample": True,
            "eos_token_id": ids["eos_token_id"],
            "pad_token_id": ids["pad_token_id"],
            **sampling,
            "transformers_version": "4.51.0",
        },
    )


def model_config(
    family: str,
    *,
    hidden_size: int,
    num_hidden_layers: int,
    num_attention_heads: int,
    num_key_value_heads: int,
    intermediate_size: int,
    vocab_size: int,
    ids: dict[str, Any],
    tie_word_embeddings: bool | None = None,
) -> dict[str, Any]:
    """The HF ``config.json`` contents for a tiny ``family`` model."""
    _check_family(family)
    if hidden_size % num_attention_heads:
        raise ValueError("hidden_size must be a multiple of num_attention_heads")
    if num_attention_heads % num_key_value_heads:
        raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
    common = {
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": ids["bos_token_id"],
        "eos_token_id": ids["eos_token_id"],
        "head_dim": hidden_size // num_attention_heads,
        "hidden_act": "silu",
        "hidden_size": hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": intermediate_size,
        "max_position_embeddings": MAX_POSITION_EMBEDDINGS,
        "num_attention_heads": num_attention_heads,
        "num_hidden_layers": num_hidden_layers,
        "num_key_value_heads": num_key_value_heads,
        "torch_dtype": "float32",
        "transformers_version": "4.51.0",
        "use_cache": True,
        "vocab_size": vocab_size,
    }
    if family == "qwen3":
        tie = True if tie_word_embeddings is None else tie_word_embeddings
        return {
            "architectures": ["Qwen3ForCausalLM"],
            "model_type": "qwen3",
            **common,
            "max_window_layers": num_hidden_layers,
            "rms_norm_eps": 1e-6,
            "rope_scaling": None,
            "rope_theta": 1000000.0,
            "sliding_window": None,
            "tie_word_embeddings": tie,
            "use_sliding_window": False,
        }
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        **common,
        "mlp_bias": False,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-5,
        "rope_scaling": {
            "factor": 8.0,
            "high_freq_factor": 4.0,
            "low_freq_factor": 1.0,
            "original_max_position_embeddings": 1024,
            "rope_type": "llama3",
        },
        "rope_theta": 500000.0,
        "tie_word_embeddings": False if tie_word_embeddings is None else tie_word_embeddings,
    }


def _random_weights(
    config: dict[str, Any], seed: int, init_scale: float | None, quiet_ids: Sequence[int]
) -> dict:
    """Instantiate the mlx-lm model class for ``config`` and return its
    (optionally rescaled) random parameters, named as ``load_weights`` wants."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    if config["model_type"] == "qwen3":
        from mlx_lm.models import qwen3 as arch
    else:
        from mlx_lm.models import llama as arch

    args = arch.ModelArgs.from_dict(config)
    mx.random.seed(seed)
    model = arch.Model(args)
    weights = dict(tree_flatten(model.parameters()))
    if init_scale is not None:
        for name in list(weights):
            if name.endswith("embed_tokens.weight") or name.startswith("lm_head."):
                weights[name] = weights[name] * init_scale
    if quiet_ids:
        if config["tie_word_embeddings"]:
            raise ValueError("visible_text needs an untied lm_head (tie_word_embeddings=False)")
        head = weights["lm_head.weight"]
        keep = mx.ones((head.shape[0], 1), dtype=head.dtype)
        keep[mx.array(list(quiet_ids))] = 0.0
        weights["lm_head.weight"] = head * keep
    weights = model.sanitize(weights)
    weights = {k: v.astype(mx.float32) for k, v in weights.items()}
    mx.eval(weights)
    return weights


def invisible_token_ids(family: str, vocab_size: int) -> list[int]:
    """Ids of tokens that show nothing readable on their own: added/special
    tokens, whitespace-only tokens and byte fragments of multi-byte UTF-8."""
    from .scripted_model import token_byte_table

    tok = train_tokenizer(family, vocab_size)
    added = {t.content for t in tok.get_added_tokens_decoder().values()}
    out = []
    for i, hexed in enumerate(token_byte_table(tok)):
        if tok.id_to_token(i) in added:
            out.append(i)
            continue
        try:
            text = bytes.fromhex(hexed).decode("utf-8")
        except UnicodeDecodeError:
            out.append(i)
            continue
        if not text.strip() or not text.isprintable():
            out.append(i)
    return out


def build_tiny_model(
    path: str | Path,
    family: str = "qwen3",
    *,
    hidden_size: int = 64,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    intermediate_size: int = 128,
    vocab_size: int = 2048,
    seed: int = 0,
    init_scale: float | None = None,
    tie_word_embeddings: bool | None = None,
    visible_text: bool = False,
) -> Path:
    """Write a tiny random ``family`` model folder at ``path`` and return it.

    Weights are float32, made by instantiating ``mlx_lm.models.qwen3.Model``
    or ``mlx_lm.models.llama.Model`` after ``mx.random.seed(seed)``, so the same
    arguments always give byte-identical ``model.safetensors``.

    * ``init_scale`` multiplies the token embedding and the ``lm_head`` (when
      untied); ``None`` keeps mlx's defaults (embedding ~ N(0, 1), linear
      layers ~ U(+-1/sqrt(fan_in))).  Norms and other layers are unchanged.
    * ``tie_word_embeddings``: ``None`` is the family default (qwen3 tied,
      llama untied).
    * ``visible_text`` zeroes the ``lm_head`` rows of ``invisible_token_ids``
      (special / whitespace-only / partial-UTF-8 tokens): their logit is then
      exactly 0 while the others spread around it, so a random model almost
      never emits them (nor EOS).  Needs an untied head.

    See ``demo.py`` for the measurements behind the demo model's choice.
    """
    import mlx.core as mx

    _check_family(family)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    ids = write_tokenizer_files(path, family, vocab_size)
    write_generation_config(path, family, ids)
    config = model_config(
        family,
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        intermediate_size=intermediate_size,
        vocab_size=vocab_size,
        ids=ids,
        tie_word_embeddings=tie_word_embeddings,
    )
    _write_json(path / "config.json", config)
    quiet = invisible_token_ids(family, vocab_size) if visible_text else []
    weights = _random_weights(config, seed, init_scale, quiet)
    mx.save_safetensors(str(path / "model.safetensors"), weights, metadata={"format": "mlx"})
    return path


def build_scripted_model(
    path: str | Path,
    rules: Sequence[dict[str, Any]] = (),
    default_reply: str = "Hello from the scripted model.",
    family: str = "qwen3",
    *,
    vocab_size: int = 2048,
    agent: bool = False,
    command: str | None = None,
    max_position_embeddings: int | None = None,
) -> Path:
    """Write a model folder whose replies are scripted (see ``scripted_model``).

    ``rules`` is a list of ``{"if_contains": text, "reply": text}`` checked in
    order against the conversation before the last assistant turn; the first
    match's ``reply`` is generated, else ``default_reply``.  Every reply is
    followed by the family's EOS.  Load with ``trust_remote_code=True``.
    A rule may add ``"quote": regex``: the regex's first group, found in the
    conversation, replaces ``{quote}`` in its reply (e.g. to repeat a tool result).

    ``agent=True`` makes it behave like a tool-using agent when no rule
    matches (``agent_script``): with tools offered it calls the shell tool
    with ``command`` (default ``echo MARKER_$((6*7))``) in the family's native
    format (qwen3: Hermes ``<tool_call>``; llama: Llama 3 JSON), and once the
    result is back it answers quoting it.  ``max_position_embeddings`` sets
    the context length (agent clients send long system prompts).
    """
    import mlx.core as mx

    from . import scripted_model

    spec = _check_family(family)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    ids = write_tokenizer_files(path, family, vocab_size)
    write_generation_config(path, family, ids)
    tok = train_tokenizer(family, vocab_size)
    config = scripted_model.scripted_config(
        tokenizer=tok,
        rules=list(rules),
        default_reply=default_reply,
        assistant_marker=spec["assistant_marker"],
        eos_token_id=ids["eos_token_id"],
        bos_token_id=ids["bos_token_id"],
        vocab_size=vocab_size,
    )
    if agent:
        from .agent_script import DEFAULT_COMMAND, FAMILY_FORMATS

        config["agent"] = {"format": FAMILY_FORMATS[family], "command": command or DEFAULT_COMMAND}
    if max_position_embeddings:
        config["max_position_embeddings"] = max_position_embeddings
    _write_json(path / "config.json", config)
    (path / scripted_model.MODEL_FILE).write_text(scripted_model.MODEL_FILE_SOURCE)
    mx.save_safetensors(
        str(path / "model.safetensors"), scripted_model.dummy_weights(), metadata={"format": "mlx"}
    )
    return path
