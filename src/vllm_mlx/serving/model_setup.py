"""Building one served chat model: its engine (loading on the engine thread) and its ServingState.

Used for the single model of a server and for each model of multi-model serving.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from .. import BLAS_STATUS
from ..config import ServerConfig
from ..engine.async_engine import AsyncEngine
from ..engine.config import EngineConfig
from ..engine.process_client import EngineProcess
from ..models.loader import (LoadedModel, human_bytes, load_metadata, load_model, resolve_model_path, weight_bytes,
                             weight_files)
from ..models.vision_loader import NO_VISION_METADATA, load_vision_metadata, load_vision_model, serving_mode
from ..options import ENGINE_RESTARTS, MAX_LORAS, SPECULATIVE_TOKENS
from ..platform import detect_backend
from ..parsers import detect_reasoning_parser, detect_tool_parser, get_reasoning_parser, get_tool_parser
from .admission import build_admission
from .distributed_setup import LeaderSetup, distributed_engine, end_distributed_job
from .prompt_guard import PromptGuard
from .state import ServingState
from .vision_inputs import VisionInputs

logger = logging.getLogger("vllm_mlx")


def engine_config(config: ServerConfig) -> EngineConfig:
    return EngineConfig(
        max_num_seqs=config.max_num_seqs,
        max_num_batched_tokens=config.max_num_batched_tokens,
        deterministic=config.deterministic,
        prefix_cache=config.prefix_cache,
        cache_memory_bytes=None if config.cache_memory_mb is None else config.cache_memory_mb << 20,
        cache_memory_fraction=config.cache_memory_fraction,
        prefix_block_size=config.prefix_block_size,
        kv_cache_bits=config.kv_cache_bits,
        kv_cache_dir=config.kv_cache_dir,
        kv_cache_dir_bytes=config.kv_cache_dir_mb << 20,
        checkpoint_stride=config.checkpoint_stride,
        verify_cache_restores=config.verify_cache_restores,
        stream_buffer_events=config.limits.stream_buffer_events,
        stream_buffer_bytes=config.limits.stream_buffer_bytes,
        speculative=config.speculative,  # auto: chosen on the engine thread once the model is loaded
        draft_model=None if config.draft_model is None else str(resolve_model_path(config.draft_model)),
        num_speculative_tokens=config.num_speculative_tokens or SPECULATIVE_TOKENS,
        loras=tuple(config.lora),
        max_loras=config.max_loras or MAX_LORAS,
    )


class ModelLoad:
    """The load function run on the engine thread (in the engine process with --engine-process: it is
    picklable); it also records the loaded weights' bytes."""

    def __init__(self, config: ServerConfig, source: str | Path):
        self.config = config
        self.source = source

    def __call__(self) -> LoadedModel:
        config, source = self.config, self.source
        backend = detect_backend(BLAS_STATUS, config.dtype)
        logger.info("%s", backend.describe())
        mode = serving_mode(Path(source), mllm=config.mllm, text_only=config.text_only)
        if mode.vision:
            started = time.monotonic()
            files, size = weight_files(Path(source))
            logger.info("loading %s (vision-language): %d weight file(s), %s", Path(source).name, files,
                        human_bytes(size))
            loaded = load_vision_model(Path(source), compute_dtype=backend.compute_dtype,
                                       cache_bytes=config.vision_cache_mb << 20,
                                       trust_remote_code=config.trust_remote_code, mode=mode)
            logger.info("loaded %s: weights, processor and tokenizer in %.1f s", Path(source).name,
                        time.monotonic() - started)
        else:
            if mode.reason != NO_VISION_METADATA:
                logger.info("serving %s as a text model: %s", Path(source).name, mode.reason)
            loaded = load_model(str(source), compute_dtype=backend.compute_dtype,
                                trust_remote_code=config.trust_remote_code)
        loaded.backend = backend
        loaded.weight_bytes = weight_bytes(loaded.model)
        return loaded


def model_loader(config: ServerConfig, source: str | Path) -> ModelLoad:
    return ModelLoad(config, source)


def build_engine(config: ServerConfig, source: str | Path, group=None) -> AsyncEngine:
    """``group``: the mx.distributed group of a --distributed job (this process is rank 0)."""
    if group is not None:
        load, engine_factory = distributed_engine(config, Path(source), group)
        return AsyncEngine(load, engine_config(config), engine_factory)
    if config.engine_process:
        return AsyncEngine(metadata_loader(config, source), engine_config(config),
                           engine_process_factory(config, source))
    return AsyncEngine(model_loader(config, source), engine_config(config))


def metadata_loader(config: ServerConfig, source: str | Path):
    """--engine-process: what this process loads of the model -- tokenizer, config, and for a
    vision-language model its processor -- without the weights (the engine process loads those)."""

    def load() -> LoadedModel:
        if serving_mode(Path(source), mllm=config.mllm, text_only=config.text_only).vision:
            return load_vision_metadata(Path(source), trust_remote_code=config.trust_remote_code)
        return load_metadata(str(source))

    return load


def engine_process_factory(config: ServerConfig, source: str | Path):
    """--engine-process: the engine in a child process. With --distributed that process is rank 0:
    it joins the group and hosts the leader; it is not restarted (the other ranks stop following
    when it dies), so its death ends the job as a lost rank does."""

    def factory(load, engine_cfg: EngineConfig, on_outputs) -> EngineProcess:
        if config.distributed:
            return EngineProcess(load, None, engine_cfg, on_outputs, max_restarts=0, log_level=config.log_level,
                                 setup=LeaderSetup(config, Path(source)), on_death=end_distributed_job)
        restarts = ENGINE_RESTARTS if config.engine_restarts is None else config.engine_restarts
        return EngineProcess(load, model_loader(config, source), engine_cfg, on_outputs, max_restarts=restarts,
                             log_level=config.log_level)

    return factory


def build_serving(config: ServerConfig, engine: AsyncEngine, names: tuple[str, ...],
                  strict_model_id: bool | None = None) -> ServingState:
    """The serving state of a started engine (its model is loaded)."""
    loaded: LoadedModel = engine.loaded
    max_len = min(config.max_model_len or loaded.max_model_len, loaded.max_model_len)
    if config.max_model_len and config.max_model_len > loaded.max_model_len:
        logger.warning("--max-model-len %d exceeds the model's %d; using %d",
                       config.max_model_len, loaded.max_model_len, max_len)
    return ServingState(
        engine=engine,
        tokenizer=loaded.tokenizer,
        model_name=names[0],
        aliases=tuple(names[1:]),
        max_model_len=max_len,
        default_max_tokens=config.max_tokens,
        defaults=config.sampling_defaults,
        strict_model_id=config.strict_model_id if strict_model_id is None else strict_model_id,
        adapters=dict(config.lora),
        limits=config.limits,
        admission=build_admission(config.limits, engine.engine.kv_bytes_per_token),
        prompt_guard=prompt_guard(config, loaded.tokenizer, max_len),
        **choose_output_parsers(loaded.tokenizer, config.tool_call_parser, config.reasoning_parser),
        vision=VisionInputs(loaded.vision, loaded.tokenizer, config.media_fetch, config.media_limits)
        if loaded.vision else None,
    )


def prompt_guard(config: ServerConfig, tokenizer, max_len: int) -> PromptGuard:
    """Prompts longer than the tightest token budget can hold are refused before tokenizing."""
    cap = config.limits.max_prompt_tokens
    if cap is not None and cap < max_len:
        return PromptGuard(tokenizer, cap, "--max-prompt-tokens")
    return PromptGuard(tokenizer, max_len, "--max-model-len")


def resolve_model(config: ServerConfig) -> tuple[str, str]:
    """(what to load, the name to serve it under); no model means the built-in demo model."""
    if config.model is None:
        from ..models.demo import DEMO_MODEL_NAME, ensure_demo_model  # built on first use

        return str(ensure_demo_model()), DEMO_MODEL_NAME
    name = config.model.rstrip("/")
    return config.model, (Path(name).name if Path(name).expanduser().exists() else name)


def choose_output_parsers(tokenizer, tool_flag: str, reasoning_flag: str) -> dict:
    """Tool-call and reasoning parsers: from the flags, or detected from the chat template ("auto")."""
    template = getattr(tokenizer, "chat_template", None) or ""
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    vocab = {t.content for t in added.values()}
    special = frozenset(t.content for t in added.values() if getattr(t, "special", False))
    tool = detect_tool_parser(template, vocab) if tool_flag == "auto" else (None if tool_flag == "none" else tool_flag)
    reasoning = (detect_reasoning_parser(template, vocab) if reasoning_flag == "auto"
                 else (None if reasoning_flag == "none" else reasoning_flag))
    if tool:
        get_tool_parser(tool)  # unknown names fail at startup, not per request
    if reasoning:
        get_reasoning_parser(reasoning)
    logger.info("output parsers: tool calls %s, reasoning %s", tool or "none", reasoning or "none")
    return {"tool_parser": tool, "reasoning_parser": reasoning, "special_tokens": special}
