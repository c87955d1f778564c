"""A scripted model that misbehaves on demand, for fault-isolation and watchdog tests.

It answers like :mod:`scripted_model`, except in a forward pass whose new tokens spell a marker:
``raise_marker`` makes that forward raise (a processor failure of one request), ``stall_marker``
makes it sleep ``stall_seconds`` on the engine thread (a stuck engine loop).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx

from . import scripted_model
from .builders import build_scripted_model

MODEL_FILE = "fault_model.py"
MODEL_FILE_SOURCE = scripted_model.model_file_source("Fault-injecting test model", "vllm_mlx_testing.fault_model")


class InjectedFault(RuntimeError):
    """The failure the model raises on ``raise_marker``."""


@dataclass
class ModelArgs(scripted_model.ModelArgs):
    raise_marker: str = "FAULT_RAISE"
    stall_marker: str = "FAULT_STALL"
    stall_seconds: float = 5.0


class Model(scripted_model.Model):
    def __call__(self, inputs: mx.array, cache=None, input_embeddings=None, **kwargs) -> mx.array:
        if inputs.shape[1] > 1:  # a prompt chunk: look for the markers in its text
            text = "".join(self._script.decode(row) for row in inputs.tolist())
            if self.args.raise_marker in text:
                raise InjectedFault(f"injected failure for a prompt containing {self.args.raise_marker!r}")
            if self.args.stall_marker in text:
                time.sleep(self.args.stall_seconds)
        return super().__call__(inputs, cache=cache, input_embeddings=input_embeddings, **kwargs)


def build_fault_model(path: str | Path, stall_seconds: float = 5.0, family: str = "qwen3", **kwargs) -> Path:
    """A scripted model folder (see ``build_scripted_model``) with the faults above; trust_remote_code."""
    path = build_scripted_model(path, family=family, **kwargs)
    config = json.loads((path / "config.json").read_text())
    config.update(model_file=MODEL_FILE, stall_seconds=stall_seconds)
    (path / "config.json").write_text(json.dumps(config))
    (path / MODEL_FILE).write_text(MODEL_FILE_SOURCE)
    return path
