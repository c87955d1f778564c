"""The FastAPI application: wires the engine, the adapters and the server state together."""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from dataclasses import asdict
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from .. import BLAS_STATUS
from ..config import ServerConfig
from ..engine.async_engine import AsyncEngine
from ..engine.config import EngineConfig
from ..models.extra_models import ExtraModels
from ..models.loader import LoadedModel, load_model, resolve_model_path
from ..platform import detect_backend
from .anthropic_routes import router as anthropic_router
from .audio_routes import router as audio_router
from .auth import APIKeyMiddleware
from .embeddings_routes import router as embeddings_router
from .errors import install_error_handlers
from .metrics import MetricsMiddleware, ServerMetrics, metrics_endpoint
from .chat_routes import router as chat_router
from .openai_routes import router as openai_router
from .request_log import RequestLogMiddleware
from .responses_convert import ResponseStore
from .responses_routes import router as responses_router
from .serving import ServingState
from .warmup import warm_up

logger = logging.getLogger("vllm_mlx")


def resolve_model(config: ServerConfig) -> tuple[str, str]:
    """(what to load, the name to serve it under); no model means the built-in demo model."""
    if config.model is None:
        from ..testing.demo import DEMO_MODEL_NAME, ensure_demo_model

        return str(ensure_demo_model()), DEMO_MODEL_NAME
    name = config.model.rstrip("/")
    return config.model, (Path(name).name if Path(name).expanduser().exists() else name)


def choose_output_parsers(tokenizer, tool_flag: str, reasoning_flag: str) -> dict:
    """Tool-call and reasoning parsers: from the flags, or detected from the chat template ("auto")."""
    from ..parsers import detect_reasoning_parser, detect_tool_parser, get_reasoning_parser, get_tool_parser

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


def create_app(config: ServerConfig) -> FastAPI:
    source, default_name = resolve_model(config)
    names = config.served_model_names or (default_name,)
    path = resolve_model_path(source)  # fails fast, with what is missing, before any MLX work
    extra_models = ExtraModels.from_sources(  # embedding / speech models: resolved now, loaded on first use
        embedding=config.embedding_model, transcription=config.stt_model, speech=config.tts_model,
        requested_dtype=config.dtype, max_embedding_batch_tokens=config.max_embedding_batch_tokens)

    def load() -> LoadedModel:
        backend = detect_backend(BLAS_STATUS, config.dtype)
        logger.info("%s", backend.describe())
        loaded = load_model(str(path), compute_dtype=backend.compute_dtype, trust_remote_code=config.trust_remote_code)
        loaded.backend = backend
        return loaded

    engine = AsyncEngine(
        load,
        EngineConfig(
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
        ),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await asyncio.to_thread(engine.start, asyncio.get_running_loop())
        loaded: LoadedModel = engine.loaded
        max_len = min(config.max_model_len or loaded.max_model_len, loaded.max_model_len)
        if config.max_model_len and config.max_model_len > loaded.max_model_len:
            logger.warning("--max-model-len %d exceeds the model's %d; using %d",
                           config.max_model_len, loaded.max_model_len, max_len)
        app.state.serving = ServingState(
            engine=engine,
            tokenizer=loaded.tokenizer,
            model_name=names[0],
            aliases=tuple(names[1:]),
            max_model_len=max_len,
            default_max_tokens=config.max_tokens,
            defaults=config.sampling_defaults,
            strict_model_id=config.strict_model_id,
            **choose_output_parsers(loaded.tokenizer, config.tool_call_parser, config.reasoning_parser),
        )
        if config.model is None:
            logger.warning(
                "Serving the built-in DEMO model '%s' (random weights): it produces nonsense text. "
                "Pass a model folder or Hugging Face repo id to serve a real model.", names[0])
        logger.info("model loaded from %s; serving as %s; context %d tokens", loaded.path, ", ".join(names), max_len)
        if config.warm_prompts:
            await warm_up(app.state.serving, config.warm_prompts)
        if config.preload_extra_models:
            await extra_models.preload()
        try:
            yield
        finally:
            extra_models.shutdown()
            engine.shutdown()

    app = FastAPI(title="vllm-mlx", version="0.1.0", lifespan=lifespan)
    app.state.config = config
    app.state.extra_models = extra_models
    app.state.responses_store = ResponseStore()  # bounded, for previous_response_id
    install_error_handlers(app)
    app.state.metrics = ServerMetrics(lambda: engine.stats if engine.engine.alive else None)
    engine.metrics = app.state.metrics
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    app.add_api_route("/metrics", metrics_endpoint, methods=["GET"], include_in_schema=False)
    if config.api_keys:
        app.add_middleware(APIKeyMiddleware, keys=config.api_keys)
    elif config.host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("listening on %s WITHOUT an API key: anyone who can reach this port can use the model. "
                       "Pass --api-key.", config.host)
    if config.request_log:  # outermost: also sees requests the key check refuses
        app.add_middleware(RequestLogMiddleware, path=config.request_log)
    app.include_router(chat_router)
    app.include_router(openai_router)
    app.include_router(responses_router)
    app.include_router(embeddings_router)
    app.include_router(audio_router)
    app.include_router(anthropic_router)

    @app.get("/health")
    async def health(raw: Request):
        serving: ServingState | None = getattr(raw.app.state, "serving", None)
        ok = serving is not None and serving.engine.engine.alive
        body = {"status": "ok" if ok else "unavailable"}
        if serving is not None:
            body["model"] = serving.model_name
            body["engine"] = asdict(serving.engine.stats)
        if extra_models.services():
            body["extra_models"] = extra_models.stats()
        return JSONResponse(body, status_code=200 if ok else 503)

    return app
