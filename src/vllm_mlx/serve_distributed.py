"""`vllm-mlx serve MODEL --distributed`: one model over the ranks of an ``mlx.launch`` job.

Every rank runs the same command. Rank 0 serves HTTP with a :class:`LeaderEngine` (with
--engine-process, in rank 0's engine process, which joins the group in its place); the other ranks
run a :class:`FollowerEngine` and nothing else (serving/distributed_setup.py joins the group and
loads the shards). See docs/distributed.md.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from typing import Any

from .config import ServerConfig

logger = logging.getLogger("vllm_mlx")


def run_follower(config: ServerConfig, group: Any) -> int:
    """Ranks 1..N-1: load the shard and follow rank 0 until it stops (or is lost); ends the process
    (the distributed backend's threads do not survive interpreter shutdown)."""
    code = _follow(config, group)
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _follow(config: ServerConfig, group: Any) -> int:
    from .serving.distributed_setup import shard_loader
    from .serving.model_setup import engine_config, resolve_model
    from .engine.distributed import FollowerEngine
    from .models.loader import ModelNotFoundError, resolve_model_path

    try:
        path = resolve_model_path(resolve_model(config)[0])
    except ModelNotFoundError as exc:
        logger.error("%s", exc)
        return 2
    engine = FollowerEngine(shard_loader(config, path, group), engine_config(config),
                            group=group, timeout=config.distributed_timeout)
    try:
        engine.start()
    except Exception as exc:
        logger.error("rank %d could not load its shard: %s", group.rank(), exc)
        return 2
    # Ctrl-C in mlx.launch's terminal (or a SIGTERM for the whole job) reaches every rank: a follower
    # keeps following while rank 0 drains, and ends when rank 0 sends its stop (or after the drain).
    stopping: list[float] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.append(time.monotonic()))
    while engine.alive:
        if stopping and time.monotonic() - stopping[0] > config.shutdown_timeout + 15:
            logger.warning("rank %d: rank 0 did not stop in time; exiting", group.rank())
            return 1
        time.sleep(0.5)
    return 0
