"""A tiny, real, HF-style BERT embedding model folder (random weights, trained WordPiece tokenizer).

The folder is what a sentence-embedding checkpoint on the Hugging Face Hub looks like, so it loads
through mlx-embeddings' normal path (``mlx_embeddings.utils.load(path)``):

* ``config.json`` -- ``model_type: bert`` (``BertModel``) with the HF field names;
* ``model.safetensors`` -- the ``BertModel`` parameter names (``embeddings.word_embeddings.weight``,
  ``encoder.layer.0.attention.self.query.weight``, ``pooler.dense.weight``, ...), float32;
* ``tokenizer.json`` / ``vocab.txt`` / ``tokenizer_config.json`` / ``special_tokens_map.json`` --
  a lowercasing WordPiece tokenizer trained with ``tokenizers`` on the project's generated corpus,
  with the BERT template ``[CLS] A [SEP]`` (pairs ``[CLS] A [SEP] B [SEP]``);
* ``modules.json`` / ``1_Pooling/config.json`` -- the sentence-transformers description (mean pooling).

``matryoshka_dimensions`` (optional) is written into ``config.json``; the server then accepts those
``dimensions`` values (truncate and renormalize), as it does for Matryoshka-trained models.

Nothing here imports mlx-embeddings: the builder works without the ``embeddings`` extra.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

BERT_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


@functools.lru_cache(maxsize=4)
def _train_wordpiece(vocab_size: int) -> str:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    from .tokenizer import build_corpus

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                strip_accents=None, lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                        special_tokens=list(BERT_SPECIAL_TOKENS))
    tok.train_from_iterator(build_corpus(lines=4000), trainer=trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return tok.to_str()


def train_wordpiece_tokenizer(vocab_size: int = 1024):
    """The deterministic BERT-style WordPiece tokenizer (a fresh ``tokenizers.Tokenizer``)."""
    from tokenizers import Tokenizer

    return Tokenizer.from_str(_train_wordpiece(int(vocab_size)))


def bert_config(*, hidden_size: int, num_hidden_layers: int, num_attention_heads: int,
                intermediate_size: int, vocab_size: int, max_position_embeddings: int,
                matryoshka_dimensions: Sequence[int] | None = None) -> dict[str, Any]:
    """The HF ``config.json`` of a tiny ``BertModel``."""
    if hidden_size % num_attention_heads:
        raise ValueError("hidden_size must be a multiple of num_attention_heads")
    config: dict[str, Any] = {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "attention_probs_dropout_prob": 0.0,
        "classifier_dropout": None,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "hidden_size": hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": intermediate_size,
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": max_position_embeddings,
        "num_attention_heads": num_attention_heads,
        "num_hidden_layers": num_hidden_layers,
        "pad_token_id": 0,
        "position_embedding_type": "absolute",
        "torch_dtype": "float32",
        "transformers_version": "4.51.0",
        "type_vocab_size": 2,
        "use_cache": True,
        "vocab_size": vocab_size,
    }
    if matryoshka_dimensions:
        dims = sorted({int(d) for d in matryoshka_dimensions})
        if dims[-1] > hidden_size or dims[0] < 1:
            raise ValueError(f"matryoshka_dimensions must lie in 1..{hidden_size}")
        config["matryoshka_dimensions"] = dims
    return config


def bert_random_weights(config: dict[str, Any], seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 parameters named as in HF ``BertModel`` checkpoints.

    Embeddings are N(0, 1) (so different texts land far apart), linear layers
    U(+-1/sqrt(fan_in)), layer norms identity.
    """
    rng = np.random.default_rng(seed)
    d, ff = config["hidden_size"], config["intermediate_size"]

    def normal(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(np.float32)

    def linear(name: str, fan_out: int, fan_in: int) -> dict[str, np.ndarray]:
        bound = 1.0 / np.sqrt(fan_in)
        return {
            f"{name}.weight": rng.uniform(-bound, bound, (fan_out, fan_in)).astype(np.float32),
            f"{name}.bias": rng.uniform(-bound, bound, (fan_out,)).astype(np.float32),
        }

    def layer_norm(name: str) -> dict[str, np.ndarray]:
        return {f"{name}.weight": np.ones(d, np.float32), f"{name}.bias": np.zeros(d, np.float32)}

    weights = {
        "embeddings.word_embeddings.weight": normal(config["vocab_size"], d),
        "embeddings.position_embeddings.weight": normal(config["max_position_embeddings"], d) * 0.1,
        "embeddings.token_type_embeddings.weight": normal(config["type_vocab_size"], d) * 0.1,
        **layer_norm("embeddings.LayerNorm"),
    }
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}"
        for part in ("query", "key", "value"):
            weights.update(linear(f"{p}.attention.self.{part}", d, d))
        weights.update(linear(f"{p}.attention.output.dense", d, d))
        weights.update(layer_norm(f"{p}.attention.output.LayerNorm"))
        weights.update(linear(f"{p}.intermediate.dense", ff, d))
        weights.update(linear(f"{p}.output.dense", d, ff))
        weights.update(layer_norm(f"{p}.output.LayerNorm"))
    weights.update(linear("pooler.dense", d, d))
    return weights


def write_bert_tokenizer_files(path: Path, vocab_size: int, max_length: int) -> None:
    tok = train_wordpiece_tokenizer(vocab_size)
    tok.save(str(path / "tokenizer.json"))
    vocab = sorted(tok.get_vocab().items(), key=lambda item: item[1])
    (path / "vocab.txt").write_text("".join(f"{token}\n" for token, _ in vocab), encoding="utf-8")
    added = {
        str(tok.token_to_id(t)): {"content": t, "lstrip": False, "normalized": False,
                                  "rstrip": False, "single_word": False, "special": True}
        for t in BERT_SPECIAL_TOKENS
    }
    _write_json(path / "tokenizer_config.json", {
        "added_tokens_decoder": added,
        "clean_up_tokenization_spaces": True,
        "cls_token": "[CLS]",
        "do_lower_case": True,
        "mask_token": "[MASK]",
        "model_max_length": max_length,
        "pad_token": "[PAD]",
        "sep_token": "[SEP]",
        "strip_accents": None,
        "tokenize_chinese_chars": True,
        "tokenizer_class": "BertTokenizer",
        "unk_token": "[UNK]",
    })
    _write_json(path / "special_tokens_map.json", {
        "cls_token": "[CLS]", "mask_token": "[MASK]", "pad_token": "[PAD]", "sep_token": "[SEP]",
        "unk_token": "[UNK]",
    })


def build_tiny_bert(
    path: str | Path,
    *,
    hidden_size: int = 32,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 2,
    intermediate_size: int = 64,
    vocab_size: int = 1024,
    max_position_embeddings: int = 128,
    matryoshka_dimensions: Sequence[int] | None = None,
    seed: int = 0,
) -> Path:
    """Write a tiny random BERT embedding model folder at ``path`` and return it.

    The same arguments always give byte-identical files.
    """
    from safetensors.numpy import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    write_bert_tokenizer_files(path, vocab_size, max_position_embeddings)
    config = bert_config(
        hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads, intermediate_size=intermediate_size,
        vocab_size=train_wordpiece_tokenizer(vocab_size).get_vocab_size(),
        max_position_embeddings=max_position_embeddings, matryoshka_dimensions=matryoshka_dimensions,
    )
    _write_json(path / "config.json", config)
    save_file(bert_random_weights(config, seed), str(path / "model.safetensors"), metadata={"format": "pt"})
    _write_json(path / "modules.json", [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ])
    (path / "1_Pooling").mkdir(exist_ok=True)
    _write_json(path / "1_Pooling" / "config.json", {
        "word_embedding_dimension": hidden_size, "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False,
    })
    return path
