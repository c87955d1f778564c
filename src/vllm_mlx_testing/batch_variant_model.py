"""A scripted test model whose output depends on the batch size: real batch divergence.

Alone (a forward pass over one row) it follows the scripted model's rules and default reply;
in a forward pass over several rows it follows ``batched_reply`` instead. Greedy outputs of
the same prompt therefore differ between serial and concurrent runs -- through the real
engine, batching and sampler -- which is what the batch-divergence monitor must detect.
Load with ``trust_remote_code=True`` (the folder's model file imports this module).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import mlx.core as mx

from . import scripted_model

MODEL_FILE = "batch_variant_model.py"
MODEL_FILE_SOURCE = scripted_model.model_file_source("Batch-size-dependent scripted test model", "vllm_mlx_testing.batch_variant_model")


@dataclass
class ModelArgs(scripted_model.ModelArgs):
    batched_reply_ids: list = field(default_factory=list)


class Model(scripted_model.Model):
    def __init__(self, args: ModelArgs):
        super().__init__(args)
        self._alone = self._script
        self._batched = scripted_model.Script(replace(args, default_reply_ids=args.batched_reply_ids, rules=[]))

    def __call__(self, inputs: mx.array, cache=None, input_embeddings=None, **kwargs) -> mx.array:
        # The engine runs one forward at a time on its own thread, so switching the script is safe.
        self._script = self._batched if inputs.shape[0] > 1 else self._alone
        return super().__call__(inputs, cache=cache, input_embeddings=input_embeddings, **kwargs)


def build_batch_variant_model(path: str | Path, alone_reply: str, batched_reply: str, family: str = "qwen3") -> Path:
    """A model folder replying ``alone_reply`` when run alone and ``batched_reply`` in a batch."""
    from .builders import build_scripted_model
    from .tokenizer import train_tokenizer

    path = build_scripted_model(path, [], alone_reply, family)
    config_path = path / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    tok = train_tokenizer(family, config["vocab_size"])
    config["batched_reply_ids"] = scripted_model._encode_exact(tok, batched_reply, "batched_reply")
    config["model_file"] = MODEL_FILE
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (path / scripted_model.MODEL_FILE).unlink()
    (path / MODEL_FILE).write_text(MODEL_FILE_SOURCE)
    return path
