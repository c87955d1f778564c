"""`vllm-mlx serve MODEL --distributed`: one model over the ranks of an ``mlx.launch`` job.

Every rank runs the same command. Rank 0 serves HTTP with a :class:`LeaderEngine`; the other ranks
run a :class:`FollowerEngine` and nothing else. See docs/distributed.md.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from typing import Any

from .config import ServerConfig
from .serving.distributed_setup import DistributedSetupError

logger = logging.getLogger("vllm_mlx")


def join_group(config: ServerConfig) -> Any:
    """The distributed group this process belongs to (set up by mlx.launch's environment)."""
    import mlx.core as mx

    if config.kv_cache_dir:
        raise DistributedSetupError("--kv-cache-dir is not supported with --distributed (each rank would "
                                    "persist its own shard); drop it")
    if config.models:
        raise DistributedSetupError("--distributed serves one model; drop --models")
    if config.batch_divergence_monitor:
        raise DistributedSetupError("--batch-divergence-monitor is not supported with --distributed (its "
                                    "serialize switch would change rank 0's schedule alone); drop it")
    if config.mllm:
        raise DistributedSetupError("vision-language models cannot be served with --distributed yet "
                                    "(--text-only serves a vision-language folder's language model)")
    try:
        group = mx.distributed.init(strict=True)
    except Exception as exc:
        raise DistributedSetupError(
            "--distributed must run under mlx.launch, which starts every rank and tells it its peers, e.g. "
            "`mlx.launch --hosts 10.0.0.1,10.0.0.2 -- vllm-mlx serve MODEL --distributed` "
            f"(see docs/distributed.md); no distributed backend could start: {exc}") from exc
    if group.size() < 2:
        raise DistributedSetupError("--distributed needs at least 2 ranks; mlx.launch started only one")
    fmt = f"%(asctime)s rank{group.rank()} %(levelname)s %(name)s: %(message)s"
    for handler in logging.getLogger().handlers:
        handler.setFormatter(logging.Formatter(fmt))
    logger.info("rank %d of %d joined the distributed group", group.rank(), group.size())
    return group


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
