"""Rank 0's and the followers' model loader for ``--distributed``: each rank loads its shard.

The process plumbing (joining the group, running a follower) is in ``serve_distributed.py``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import BLAS_STATUS
from ..config import ServerConfig
from ..engine.distributed import LeaderEngine
from ..models.sharding import load_sharded
from ..models.vision_loader import serving_mode
from ..platform import detect_backend

logger = logging.getLogger("vllm_mlx")


class DistributedSetupError(RuntimeError):
    """--distributed cannot start here (not under mlx.launch, one rank, unsupported option)."""


def shard_loader(config: ServerConfig, path: Path, group: Any) -> Callable[[], Any]:
    def load():
        if serving_mode(path, text_only=config.text_only).vision:
            raise DistributedSetupError("vision-language models cannot be served with --distributed yet; "
                                        "--text-only serves the folder's language model as text")
        backend = detect_backend(BLAS_STATUS, config.dtype)
        logger.info("%s", backend.describe())
        loaded = load_sharded(str(path), group, compute_dtype=backend.compute_dtype,
                              trust_remote_code=config.trust_remote_code,
                              parallelism=config.distributed_parallelism,
                              # rank 0 runs an MTP head alone: it reads the output layer whole
                              whole_output_head=config.speculative == "mtp" and group.rank() == 0)
        loaded.backend = backend
        return loaded

    return load


def distributed_engine(config: ServerConfig, path: Path, group: Any) -> tuple[Callable[[], Any], Callable]:
    """Rank 0's model loader and engine class."""
    factory = functools.partial(LeaderEngine, group=group, timeout=config.distributed_timeout)
    return shard_loader(config, path, group), factory
