"""Distributed serving: the startup checks that need no second rank."""

from __future__ import annotations

import json
import shutil

import pytest

from vllm_mlx.models.sharding import UnsplittableModelError, load_sharded


class Ranks:
    """A stand-in for an mx.distributed group: the checks run before any collective."""

    def __init__(self, size: int):
        self._size = size

    def size(self) -> int:
        return self._size

    def rank(self) -> int:
        return 0


def test_an_architecture_without_shard_or_pipeline_is_refused(tmp_path, tiny_qwen3):
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(tiny_qwen3 / name, tmp_path / name)
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "gpt2", "n_ctx": 128, "n_embd": 64, "n_head": 4, "n_layer": 2, "n_positions": 128,
        "layer_norm_epsilon": 1e-5, "vocab_size": 2048}))
    with pytest.raises(UnsplittableModelError, match="'gpt2' cannot be split across machines"):
        load_sharded(str(tmp_path), Ranks(2))


def test_heads_must_divide_among_the_ranks(tiny_qwen3):
    with pytest.raises(UnsplittableModelError, match=r"num_attention_heads \(4\) to be a multiple of 3"):
        load_sharded(str(tiny_qwen3), Ranks(3))
