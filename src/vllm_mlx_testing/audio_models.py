"""Tiny, real, HF-style speech model folders with random weights, for mlx-audio's normal loaders.

* :func:`build_tiny_whisper` -- speech-to-text: a ``WhisperForConditionalGeneration`` checkpoint
  (HF config and parameter names) with the full multilingual Whisper token layout (51865 ids:
  byte-level BPE text tokens, ``<|endoftext|>``, ``<|startoftranscript|>``, 99 language tokens,
  ``<|translate|>``/``<|transcribe|>``, ``<|startoflm|>``, ``<|startofprev|>``, ``<|nocaptions|>``,
  ``<|notimestamps|>`` and the 1501 timestamp tokens ``<|0.00|>``..``<|30.00|>``), a
  ``WhisperTokenizer`` and a ``WhisperFeatureExtractor`` (``preprocessor_config.json``), so
  ``mlx_audio.stt.load(path)`` builds its Whisper model and ``WhisperProcessor`` as for a real one.
  The text vocabulary is a small BPE trained with ``tokenizers``; the rest of the 50257 text ids are
  unreachable fillers whose embedding rows are zero, so the random model writes trained words.
* :func:`build_tiny_soprano` -- text-to-speech: a Soprano checkpoint (a Qwen3 language model whose
  hidden states drive a Vocos decoder, 32 kHz) as mlx-audio's ``soprano`` family loads it through
  ``mlx_audio.tts.load(path)``, with a trained byte-level BPE tokenizer carrying Soprano's
  ``[STOP]``/``[TEXT]``/``[START]`` tokens.  Soprano's decoder size is fixed by the family (it is not
  read from the config), so the folder holds ~15M parameters (float16, ~30 MB) of which the language
  model is tiny.  The ``[STOP]`` row of the untied ``lm_head`` is scaled up so the random model ends
  an utterance after a few dozen audio tokens (about a second of sound) instead of running to the
  512-token limit.

Both need nothing from a model hub.  ``build_tiny_soprano`` instantiates mlx-audio's own module to
draw its random parameters, so it needs the ``audio`` extra; ``build_tiny_whisper`` does not.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import numpy as np

WHISPER_TEXT_VOCAB = 50257  # GPT-2 text ids 0..50256, as in every multilingual Whisper
WHISPER_N_VOCAB = 51865  # multilingual (whisper-tiny .. large-v2) layout
WHISPER_CONTROL_TOKENS = ("<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>",
                          "<|nocaptions|>", "<|notimestamps|>")
SOPRANO_SPECIAL_TOKENS = ("[STOP]", "[TEXT]", "[START]", "<|endoftext|>")


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


@functools.lru_cache(maxsize=4)
def _train_byte_bpe(vocab_size: int, lines: int) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from .tokenizer import build_corpus

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), max_token_length=12)
    tok.train_from_iterator(build_corpus(lines=lines), trainer=trainer)
    return tok.to_str()


def whisper_language_codes() -> list[str]:
    """The 99 language codes of the multilingual Whisper vocabulary, in token order."""
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    return list(LANGUAGES)[:99]


def whisper_special_tokens() -> list[str]:
    """Every added token after the text ids, in id order (ids 50257..51864)."""
    return [
        "<|endoftext|>", "<|startoftranscript|>",
        *[f"<|{code}|>" for code in whisper_language_codes()],
        *WHISPER_CONTROL_TOKENS,
        *[f"<|{i * 0.02:.2f}|>" for i in range(1501)],
    ]


def whisper_tokenizer_json(bpe_vocab_size: int = 1000) -> tuple[dict[str, Any], int, list[int]]:
    """(the ``tokenizer.json`` document, number of trained text tokens, ids of trained tokens
    that are only part of a UTF-8 character).

    Trained tokens take ids ``0..n-1``; fillers ``<|unused_i|>`` (in the BPE vocabulary but never
    produced by its merges) pad the text range to 50257 ids; the Whisper special tokens follow.
    """
    from tokenizers import Tokenizer

    trained_json = _train_byte_bpe(bpe_vocab_size, 4000)
    trained_tok = Tokenizer.from_str(trained_json)
    doc = json.loads(trained_json)
    vocab: dict[str, int] = doc["model"]["vocab"]
    partial = [i for i in range(len(vocab)) if "\ufffd" in trained_tok.decode([i])]
    trained = len(vocab)
    for i in range(WHISPER_TEXT_VOCAB - trained):
        vocab[f"<|unused_{i}|>"] = trained + i
    specials = whisper_special_tokens()
    doc["added_tokens"] = [
        {"id": WHISPER_TEXT_VOCAB + i, "content": content, "single_word": False, "lstrip": False,
         "rstrip": False, "normalized": False,
         # timestamps are added but not "special" in Whisper's tokenizer.json, like the real ones
         "special": not (content[2:3].isdigit())}
        for i, content in enumerate(specials)
    ]
    assert WHISPER_TEXT_VOCAB + len(specials) == WHISPER_N_VOCAB
    return doc, trained, partial


def whisper_config(*, d_model: int, layers: int, heads: int, ffn_dim: int, max_target_positions: int) -> dict:
    ids = {t: WHISPER_TEXT_VOCAB + i for i, t in enumerate(whisper_special_tokens()[:2 + 99 + 6])}
    return {
        "architectures": ["WhisperForConditionalGeneration"],
        "model_type": "whisper",
        "activation_function": "gelu",
        "begin_suppress_tokens": [220, ids["<|endoftext|>"]],
        "bos_token_id": ids["<|endoftext|>"],
        "d_model": d_model,
        "decoder_attention_heads": heads,
        "decoder_ffn_dim": ffn_dim,
        "decoder_layers": layers,
        "decoder_start_token_id": ids["<|startoftranscript|>"],
        "encoder_attention_heads": heads,
        "encoder_ffn_dim": ffn_dim,
        "encoder_layers": layers,
        "eos_token_id": ids["<|endoftext|>"],
        "max_source_positions": 1500,
        "max_target_positions": max_target_positions,
        "num_mel_bins": 80,
        "pad_token_id": ids["<|endoftext|>"],
        "scale_embedding": False,
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
        "transformers_version": "4.51.0",
        "vocab_size": WHISPER_N_VOCAB,
    }, ids


def whisper_random_weights(config: dict, trained_tokens: int, partial_utf8_ids: list[int],
                           seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 parameters named as in HF ``WhisperForConditionalGeneration``.

    Embedding rows that are zero get logit 0 while the trained text tokens spread far around it, so
    the model never writes them: unreachable fillers, language tokens (language detection then says
    ``en``) and byte fragments.  Timestamp rows are scaled down so text usually wins.
    """
    rng = np.random.default_rng(seed)
    d, ff = config["d_model"], config["encoder_ffn_dim"]

    def uniform(fan_in: int, *shape: int) -> np.ndarray:
        bound = 1.0 / np.sqrt(fan_in)
        return rng.uniform(-bound, bound, shape).astype(np.float32)

    def linear(name: str, fan_out: int, fan_in: int, bias: bool = True) -> dict[str, np.ndarray]:
        out = {f"{name}.weight": uniform(fan_in, fan_out, fan_in)}
        if bias:
            out[f"{name}.bias"] = uniform(fan_in, fan_out)
        return out

    def norm(name: str) -> dict[str, np.ndarray]:
        return {f"{name}.weight": np.ones(d, np.float32), f"{name}.bias": np.zeros(d, np.float32)}

    def attention(name: str) -> dict[str, np.ndarray]:
        return {**linear(f"{name}.q_proj", d, d), **linear(f"{name}.k_proj", d, d, bias=False),
                **linear(f"{name}.v_proj", d, d), **linear(f"{name}.out_proj", d, d)}

    mels = config["num_mel_bins"]
    w: dict[str, np.ndarray] = {
        "model.encoder.conv1.weight": uniform(mels * 3, d, mels, 3),
        "model.encoder.conv1.bias": uniform(mels * 3, d),
        "model.encoder.conv2.weight": uniform(d * 3, d, d, 3),
        "model.encoder.conv2.bias": uniform(d * 3, d),
        **norm("model.encoder.layer_norm"),
        **norm("model.decoder.layer_norm"),
    }
    for i in range(config["encoder_layers"]):
        p = f"model.encoder.layers.{i}"
        w.update({**attention(f"{p}.self_attn"), **norm(f"{p}.self_attn_layer_norm"),
                  **linear(f"{p}.fc1", ff, d), **linear(f"{p}.fc2", d, ff), **norm(f"{p}.final_layer_norm")})
    for i in range(config["decoder_layers"]):
        p = f"model.decoder.layers.{i}"
        w.update({**attention(f"{p}.self_attn"), **norm(f"{p}.self_attn_layer_norm"),
                  **attention(f"{p}.encoder_attn"), **norm(f"{p}.encoder_attn_layer_norm"),
                  **linear(f"{p}.fc1", ff, d), **linear(f"{p}.fc2", d, ff), **norm(f"{p}.final_layer_norm")})
    tokens = rng.standard_normal((config["vocab_size"], d)).astype(np.float32)
    tokens[trained_tokens:WHISPER_TEXT_VOCAB] = 0.0  # unreachable fillers: logit 0, never chosen
    tokens[partial_utf8_ids] = 0.0  # lone bytes of multi-byte characters would print as U+FFFD
    first_language = WHISPER_TEXT_VOCAB + 2
    tokens[first_language:first_language + 99] = 0.0  # never written as text; detection says "en"
    first_timestamp = WHISPER_N_VOCAB - 1501
    tokens[first_timestamp:] *= 0.3  # timestamps rarely outweigh the best text token
    w["model.decoder.embed_tokens.weight"] = tokens
    # Strong positions vary the hidden state from step to step: a random decoder whose state is
    # dominated by its (tied) input token would repeat that token forever.
    w["model.decoder.embed_positions.weight"] = (
        rng.standard_normal((config["max_target_positions"], d)).astype(np.float32) * 3.0)
    return w


def build_tiny_whisper(
    path: str | Path,
    *,
    d_model: int = 32,
    layers: int = 1,
    heads: int = 2,
    ffn_dim: int = 64,
    max_target_positions: int = 32,
    bpe_vocab_size: int = 1000,
    seed: int = 0,
) -> Path:
    """Write a tiny random multilingual Whisper folder at ``path`` and return it.

    ``max_target_positions`` bounds the decoder context: mlx-audio samples at most half of it per
    30-second window, which keeps random transcriptions short.
    """
    from safetensors.numpy import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    doc, trained, partial = whisper_tokenizer_json(bpe_vocab_size)
    (path / "tokenizer.json").write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    vocab = doc["model"]["vocab"]
    _write_json(path / "vocab.json", vocab)
    merges = doc["model"]["merges"]
    (path / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{m if isinstance(m, str) else ' '.join(m)}\n" for m in merges),
        encoding="utf-8")
    config, ids = whisper_config(d_model=d_model, layers=layers, heads=heads, ffn_dim=ffn_dim,
                                 max_target_positions=max_target_positions)
    _write_json(path / "config.json", config)
    specials = [t for t in whisper_special_tokens() if not t[2:3].isdigit()]
    _write_json(path / "tokenizer_config.json", {
        "add_prefix_space": False,
        "additional_special_tokens": specials[1:],
        "bos_token": "<|endoftext|>",
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|endoftext|>",
        "errors": "replace",
        "model_max_length": 1024,
        "pad_token": "<|endoftext|>",
        "processor_class": "WhisperProcessor",
        "return_attention_mask": False,
        "tokenizer_class": "WhisperTokenizer",
        "unk_token": "<|endoftext|>",
    })
    _write_json(path / "special_tokens_map.json", {
        "additional_special_tokens": specials[1:], "bos_token": "<|endoftext|>",
        "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
    })
    _write_json(path / "preprocessor_config.json", {
        "chunk_length": 30, "feature_extractor_type": "WhisperFeatureExtractor", "feature_size": 80,
        "hop_length": 160, "n_fft": 400, "n_samples": 480000, "nb_max_frames": 3000,
        "padding_side": "right", "padding_value": 0.0, "processor_class": "WhisperProcessor",
        "return_attention_mask": False, "sampling_rate": 16000,
    })
    languages = whisper_language_codes()
    _write_json(path / "generation_config.json", {
        "alignment_heads": [[layers - 1, h] for h in range(heads)],
        "begin_suppress_tokens": config["begin_suppress_tokens"],
        "bos_token_id": ids["<|endoftext|>"],
        "decoder_start_token_id": ids["<|startoftranscript|>"],
        "eos_token_id": ids["<|endoftext|>"],
        "is_multilingual": True,
        "lang_to_id": {f"<|{c}|>": ids[f"<|{c}|>"] for c in languages},
        "max_initial_timestamp_index": 50,
        "max_length": max_target_positions,
        "no_timestamps_token_id": ids["<|notimestamps|>"],
        "pad_token_id": ids["<|endoftext|>"],
        "prev_sot_token_id": ids["<|startofprev|>"],
        "return_timestamps": False,
        "suppress_tokens": [],
        "task_to_id": {"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]},
        "transformers_version": "4.51.0",
    })
    save_file(whisper_random_weights(config, trained, partial, seed), str(path / "model.safetensors"),
              metadata={"format": "pt"})
    return path


def soprano_tokenizer(bpe_vocab_size: int = 512):
    """Byte-level BPE trained on the project corpus plus Soprano's control tokens."""
    from tokenizers import AddedToken, Tokenizer

    tok = Tokenizer.from_str(_train_byte_bpe(bpe_vocab_size, 2000))
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SOPRANO_SPECIAL_TOKENS])
    return tok


def soprano_config(*, vocab_size: int, hidden_size: int, layers: int, heads: int, intermediate_size: int,
                   stop_token_id: int) -> dict[str, Any]:
    return {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "soprano",
        "attention_bias": False,
        "eos_token_id": stop_token_id,
        "head_dim": hidden_size // heads,
        "hidden_act": "silu",
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size,
        "max_position_embeddings": 2048,
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "num_key_value_heads": 1,
        "pad_token_id": stop_token_id,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "sample_rate": 32000,
        "tie_word_embeddings": False,
        "torch_dtype": "float16",
        "vocab_size": vocab_size,
    }


def build_tiny_soprano(
    path: str | Path,
    *,
    hidden_size: int = 32,
    layers: int = 1,
    heads: int = 2,
    intermediate_size: int = 64,
    bpe_vocab_size: int = 512,
    stop_scale: float = 4.0,
    seed: int = 0,
) -> Path:
    """Write a tiny random Soprano text-to-speech folder at ``path`` and return it (needs mlx-audio).

    mlx-audio sizes Soprano's decoder from the folder name (``soprano-1.1`` in it selects the larger
    decoder); the parameters are drawn for the name given here, so do not rename the folder into one
    containing ``soprano-1.1``.  ``stop_scale`` multiplies the ``[STOP]`` row of ``lm_head``.
    """
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_audio.tts.models.soprano import Model, ModelConfig

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok = soprano_tokenizer(bpe_vocab_size)
    tok.save(str(path / "tokenizer.json"))
    stop_id = tok.token_to_id("[STOP]")
    _write_json(path / "tokenizer_config.json", {
        "added_tokens_decoder": {
            str(tok.token_to_id(t)): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                      "single_word": False, "special": True}
            for t in SOPRANO_SPECIAL_TOKENS
        },
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "eos_token": "[STOP]",
        "model_max_length": 2048,
        "pad_token": "[STOP]",
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": None,
    })
    _write_json(path / "special_tokens_map.json", {"eos_token": "[STOP]", "pad_token": "[STOP]"})
    config = soprano_config(vocab_size=tok.get_vocab_size(), hidden_size=hidden_size, layers=layers,
                            heads=heads, intermediate_size=intermediate_size, stop_token_id=stop_id)
    _write_json(path / "config.json", config)
    mx.random.seed(seed)
    model = Model(ModelConfig.from_dict({**config, "model_path": str(path)}))
    weights = dict(tree_flatten(model.parameters()))
    head = weights["language_model.lm_head.weight"]
    weights["language_model.lm_head.weight"] = mx.concatenate(
        [head[:stop_id], head[stop_id:stop_id + 1] * stop_scale, head[stop_id + 1:]])
    weights = {k: v.astype(mx.float16) for k, v in weights.items()}
    mx.save_safetensors(str(path / "model.safetensors"), weights, metadata={"format": "mlx"})
    return path
