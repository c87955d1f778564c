"""A tiny Qwen2 model folder: the architecture mlx-lm splits both ways (``shard()`` and ``pipeline()``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path


def build_qwen2_like(path: str | Path, like: str | Path, num_hidden_layers: int | None = None, seed: int = 0) -> Path:
    """Write a random-weight ``model_type: qwen2`` folder with the sizes and tokenizer of the Qwen3
    folder ``like`` (made by ``build_tiny_model``), optionally with another number of layers."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.models import qwen2

    path, like = Path(path), Path(like)
    path.mkdir(parents=True, exist_ok=True)
    config = json.loads((like / "config.json").read_text())
    config.update(model_type="qwen2", architectures=["Qwen2ForCausalLM"])
    if num_hidden_layers is not None:
        config["num_hidden_layers"] = config["max_window_layers"] = num_hidden_layers
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for f in like.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "generation")):
            shutil.copy(f, path / f.name)
    mx.random.seed(seed)
    model = qwen2.Model(qwen2.ModelArgs.from_dict(config))
    weights = {k: v.astype(mx.float32) for k, v in tree_flatten(model.parameters())}
    mx.save_safetensors(str(path / "model.safetensors"), weights, metadata={"format": "mlx"})
    return path
