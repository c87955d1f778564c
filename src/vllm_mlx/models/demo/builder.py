"""The builder of tiny random model folders (the demo model is one).

A folder loads through mlx-lm's normal path (``mlx_lm.load(path)``, or
``mlx_lm.utils.load_model`` + ``load_tokenizer``): a ``config.json`` with the
architecture's real HF field names, ``model.safetensors``, and the tokenizer
files (``tokenizer.json``, ``tokenizer_config.json`` with the chat template,
``special_tokens_map.json``) plus ``generation_config.json``.

A ``ModelFamily`` says what differs between families: tokens, chat template,
the HF config's architecture fields, sampling defaults.  One family ships
with the server, ``QWEN3`` (``model_type: qwen3``, ``Qwen3ForCausalLM``,
ChatML template, EOS ``<|im_end|>`` and ``<|endoftext|>``, no BOS); the test
fixtures (``vllm_mlx_testing.builders``, not part of the wheel) add Llama 3.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from .chat_template import QWEN3_CHAT_TEMPLATE
from .tokenizer import QWEN3_TOKENS, token_byte_table, train_bpe_tokenizer

MAX_POSITION_EMBEDDINGS = 4096


@dataclass(frozen=True)
class ModelFamily:
    """What a tiny model folder of one family needs.

    ``tokens``: the added ``(content, special)`` tokens; ``eos``: EOS tokens,
    the chat EOS first; ``bos``: the tokenizer's BOS token (prepended on
    ``encode`` and named in ``tokenizer_config.json``) or None;
    ``bos_id_token``: the token the configs' ``bos_token_id`` names;
    ``architecture(common, num_hidden_layers, tie_word_embeddings)``: the HF
    ``config.json`` from the fields every family shares (``tie_word_embeddings``
    None means the family default).
    """

    name: str
    tokens: tuple[tuple[str, bool], ...]
    chat_template: str
    eos: tuple[str, ...]
    bos: str | None
    bos_id_token: str
    pad: str
    assistant_marker: str
    sampling: dict[str, Any]
    architecture: Callable[[dict[str, Any], int, bool | None], dict[str, Any]]
    # special_tokens_map.json lists the special added tokens (as Qwen's does)
    list_special_tokens: bool = False

    def tokenizer(self, vocab_size: int):
        """The family's trained byte-level BPE tokenizer (a fresh ``tokenizers.Tokenizer``)."""
        return train_bpe_tokenizer(self.tokens, vocab_size, self.bos)


def _qwen3_architecture(common: dict[str, Any], num_hidden_layers: int, tie: bool | None) -> dict[str, Any]:
    return {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        **common,
        "max_window_layers": num_hidden_layers,
        "rms_norm_eps": 1e-6,
        "rope_scaling": None,
        "rope_theta": 1000000.0,
        "sliding_window": None,
        "tie_word_embeddings": True if tie is None else tie,
        "use_sliding_window": False,
    }


QWEN3 = ModelFamily(
    name="qwen3",
    tokens=QWEN3_TOKENS,
    chat_template=QWEN3_CHAT_TEMPLATE,
    eos=("<|im_end|>", "<|endoftext|>"),
    bos=None,
    bos_id_token="<|endoftext|>",  # Qwen configs name it, the tokenizer has none
    pad="<|endoftext|>",
    assistant_marker="<|im_start|>assistant",
    sampling={"temperature": 0.6, "top_k": 20, "top_p": 0.95},
    architecture=_qwen3_architecture,
    list_special_tokens=True,
)


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def family_token_ids(family: ModelFamily, vocab_size: int) -> dict[str, Any]:
    """EOS ids (chat EOS first), BOS id and pad id of ``family``'s tokenizer."""
    tok = family.tokenizer(vocab_size)
    return {
        "eos_token_id": [tok.token_to_id(t) for t in family.eos],
        "bos_token_id": tok.token_to_id(family.bos_id_token),
        "pad_token_id": tok.token_to_id(family.pad),
    }


def write_tokenizer_files(path: Path, family: ModelFamily, vocab_size: int) -> dict[str, Any]:
    """Write ``tokenizer.json``, ``tokenizer_config.json`` and
    ``special_tokens_map.json`` for ``family``; returns the token ids."""
    tok = family.tokenizer(vocab_size)
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
        for content, special in family.tokens
    }
    config: dict[str, Any] = {
        "add_bos_token": family.bos is not None,
        "add_eos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        "bos_token": family.bos,
        "chat_template": family.chat_template,
        "clean_up_tokenization_spaces": False,
        "eos_token": family.eos[0],
        "errors": "replace",
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": MAX_POSITION_EMBEDDINGS,
        "pad_token": family.pad,
        "split_special_tokens": False,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": None,
    }
    _write_json(path / "tokenizer_config.json", config)
    special_map: dict[str, Any] = {"eos_token": family.eos[0], "pad_token": family.pad}
    if family.bos is not None:
        special_map["bos_token"] = family.bos
    if family.list_special_tokens:
        special_map["additional_special_tokens"] = [t for t, special in family.tokens if special]
    _write_json(path / "special_tokens_map.json", special_map)
    return ids


def write_generation_config(path: Path, family: ModelFamily, ids: dict[str, Any]) -> None:
    _write_json(
        path / "generation_config.json",
        {
            "bos_token_id": ids["bos_token_id"],
            "do_sample": True,
            "eos_token_id": ids["eos_token_id"],
            "pad_token_id": ids["pad_token_id"],
            **family.sampling,
            "transformers_version": "4.51.0",
        },
    )


def model_config(
    family: ModelFamily,
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
    return family.architecture(common, num_hidden_layers, tie_word_embeddings)


def random_weights(
    config: dict[str, Any], seed: int, init_scale: float | None, quiet_ids: Sequence[int]
) -> dict:
    """Instantiate the mlx-lm model class for ``config`` and return its
    (optionally rescaled) random parameters, named as ``load_weights`` wants."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    arch = importlib.import_module(f"mlx_lm.models.{config['model_type']}")
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


def invisible_token_ids(family: ModelFamily, vocab_size: int) -> list[int]:
    """Ids of tokens that show nothing readable on their own: added/special
    tokens, whitespace-only tokens and byte fragments of multi-byte UTF-8."""
    tok = family.tokenizer(vocab_size)
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


def build_random_model(
    path: str | Path,
    family: ModelFamily = QWEN3,
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

    Weights are float32, made by instantiating the family's mlx-lm model class
    (``mlx_lm.models.<model_type>.Model``) after ``mx.random.seed(seed)``, so
    the same arguments always give byte-identical ``model.safetensors``.

    * ``init_scale`` multiplies the token embedding and the ``lm_head`` (when
      untied); ``None`` keeps mlx's defaults (embedding ~ N(0, 1), linear
      layers ~ U(+-1/sqrt(fan_in))).  Norms and other layers are unchanged.
    * ``tie_word_embeddings``: ``None`` is the family default (qwen3 tied).
    * ``visible_text`` zeroes the ``lm_head`` rows of ``invisible_token_ids``
      (special / whitespace-only / partial-UTF-8 tokens): their logit is then
      exactly 0 while the others spread around it, so a random model almost
      never emits them (nor EOS).  Needs an untied head.

    See ``demo_model.py`` for the measurements behind the demo model's choice.
    """
    import mlx.core as mx

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
    weights = random_weights(config, seed, init_scale, quiet)
    mx.save_safetensors(str(path / "model.safetensors"), weights, metadata={"format": "mlx"})
    return path
