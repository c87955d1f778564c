"""``--distributed``: joining the group ``mlx.launch`` set up, and each rank's shard loader; with
``--engine-process``, what rank 0's engine process runs to join the group in place of the API
process that starts it.

Running a follower is in ``serve_distributed.py``.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import BLAS_STATUS
from ..config import ServerConfig
from ..engine.distributed import LeaderEngine
from ..engine.lockstep import exit_process
from ..engine.process_main import EngineSetup
from ..models.loader import weight_bytes
from ..models.sharding import load_sharded
from ..models.vision_loader import serving_mode
from ..platform import detect_backend

logger = logging.getLogger("vllm_mlx")

# Where launchers put a rank's number: mlx.launch (ring, jaccl, nccl backends), then MPI's.
RANK_VARIABLES = ("MLX_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK")


class DistributedSetupError(RuntimeError):
    """--distributed cannot start here (not under mlx.launch, one rank, unsupported option)."""


def check_distributed(config: ServerConfig) -> None:
    """The options --distributed cannot serve with, refused before anything joins or loads."""
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


def launched_rank(environ: Mapping[str, str] = os.environ) -> int:
    """This process's rank as its launcher wrote it in the environment, read without joining the
    group: with --engine-process, rank 0's engine process joins it, not its API process."""
    for name in RANK_VARIABLES:
        value = environ.get(name, "").strip()
        if value.isdigit():
            return int(value)
    raise DistributedSetupError(
        "--distributed must run under mlx.launch, which tells each rank its number (none of "
        f"{', '.join(RANK_VARIABLES)} is set here), e.g. `mlx.launch --hosts 10.0.0.1,10.0.0.2 -- "
        "vllm-mlx serve MODEL --distributed` (see docs/distributed.md)")


def tag_log_lines(tag: str) -> None:
    """Every log line of this process names its rank (mlx.launch brings all ranks' lines together)."""
    fmt = f"%(asctime)s {tag} %(levelname)s %(name)s: %(message)s"
    for handler in logging.getLogger().handlers:
        handler.setFormatter(logging.Formatter(fmt))


def join_group(config: ServerConfig) -> Any:
    """The distributed group this process belongs to (set up by mlx.launch's environment)."""
    import mlx.core as mx

    check_distributed(config)
    # A rank that connects gives up after MLX's own retries (~30 s with the ring backend); rank 0 may
    # join later than the others (with --engine-process its engine process joins once it has started),
    # so the others try again until --distributed-timeout has passed.
    deadline = time.monotonic() + config.distributed_timeout
    while True:
        try:
            group = mx.distributed.init(strict=True)
            break
        except Exception as exc:
            if "connect" in str(exc).lower() and time.monotonic() < deadline:
                logger.warning("the other ranks cannot be reached yet (%s); trying again", exc)
                continue
            raise DistributedSetupError(
                "--distributed must run under mlx.launch, which starts every rank and tells it its peers, e.g. "
                "`mlx.launch --hosts 10.0.0.1,10.0.0.2 -- vllm-mlx serve MODEL --distributed` "
                f"(see docs/distributed.md); no distributed backend could start: {exc}") from exc
    if group.size() < 2:
        raise DistributedSetupError("--distributed needs at least 2 ranks; mlx.launch started only one")
    tag_log_lines(f"rank{group.rank()}")
    logger.info("rank %d of %d joined the distributed group", group.rank(), group.size())
    return group


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
        loaded.weight_bytes = weight_bytes(loaded.model)  # this rank's shard
        return loaded

    return load


def distributed_engine(config: ServerConfig, path: Path, group: Any) -> tuple[Callable[[], Any], Callable]:
    """Rank 0's model loader and engine class."""
    factory = functools.partial(LeaderEngine, group=group, timeout=config.distributed_timeout)
    return shard_loader(config, path, group), factory


@dataclass(frozen=True)
class LeaderSetup:
    """--distributed --engine-process: rank 0's engine, set up in its engine process (pickled there,
    called on its main thread): the process joins the group as rank 0 and hosts a LeaderEngine."""

    config: ServerConfig
    path: Path

    def __call__(self) -> EngineSetup:
        # mx.distributed.init holds the GIL while it waits for the other ranks: no thread of this
        # process runs then (its watch of the API process neither), so the kernel bounds the wait
        # (SIGALRM's default action ends the process); mlx.launch does not know this process
        bound = max(math.ceil(self.config.distributed_timeout), 1)
        logger.info("joining the distributed group as rank 0 (at most %d s)", bound)
        previous = signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.alarm(bound)
        try:
            group = join_group(self.config)
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)
        if group.rank() != 0:
            raise DistributedSetupError(f"rank 0's engine process joined the group as rank {group.rank()}")
        return EngineSetup(shard_loader(self.config, self.path, group), LeaderEngine,
                           {"group": group, "timeout": self.config.distributed_timeout})


def end_distributed_job(reason: str) -> None:
    """Rank 0's engine process died: its API process ends too, a second later (the requests' error
    events go out first), so mlx.launch ends the job; starting the job again restarts every rank."""
    exit_process(f"rank 0's engine process died ({reason})", delay=1.0)
