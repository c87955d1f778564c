"""The FastAPI application: wires the engine, the adapters and the server state together."""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import asdict

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from ..config import ServerConfig
from ..models.extra_models import ExtraModels
from ..models.loader import resolve_model_path
from ..operator_cli import is_loopback
from .anthropic_routes import router as anthropic_router
from .audio_routes import router as audio_router
from .auth import APIKeyMiddleware, open_paths
from .body_limit import BodySizeLimitMiddleware
from .process_stats import process_memory
from .stream_guard import StreamErrorMiddleware
from .embeddings_routes import router as embeddings_router
from .errors import install_error_handlers
from .mcp_routes import router as mcp_router, start_mcp
from .metrics import MetricsMiddleware, ServerMetrics, metrics_endpoint
from .chat_routes import router as chat_router
from .divergence_monitor import DivergenceMonitors
from .model_registry import ModelLeaseMiddleware, ModelRegistry, ModelRegistryCollector
from ..serving.model_setup import build_engine, build_serving, resolve_model
from .openai_routes import router as openai_router
from .operator_routes import install_cors, install_rate_limit, router as operator_router
from .request_log import RequestLogMiddleware
from .request_routes import router as request_router
from .responses_convert import ResponseStore
from .responses_routes import router as responses_router
from ..serving.state import ServingState
from ..serving.warmup import warm_up
from .watchdog import EngineWatchdog

logger = logging.getLogger("vllm_mlx")


def create_app(config: ServerConfig, group=None) -> FastAPI:
    """``group``: the mx.distributed group when serving with --distributed (this is rank 0)."""
    registry = ModelRegistry(config) if config.models else None  # multi-model serving
    engine = names = None
    if registry is not None:
        registry.check_sources()  # fails fast on a configured folder that is not a model
    else:
        source, default_name = resolve_model(config)
        names = config.served_model_names or (default_name,)
        path = resolve_model_path(source)  # fails fast, with what is missing, before any MLX work
        engine = build_engine(config, path, group)
    extra_models = ExtraModels.from_sources(  # embedding / speech models: resolved now, loaded on first use
        embedding=config.embedding_model, transcription=config.stt_model, speech=config.tts_model,
        requested_dtype=config.dtype, max_embedding_batch_tokens=config.max_embedding_batch_tokens)

    async def start_single_model(app: FastAPI) -> None:
        started = time.monotonic()
        await asyncio.to_thread(engine.start, asyncio.get_running_loop())
        app.state.serving = serving = build_serving(config, engine, names)
        if config.model is None:
            logger.warning(
                "Serving the built-in DEMO model '%s' (random weights): it produces nonsense text. "
                "Pass a model folder or Hugging Face repo id to serve a real model.", names[0])
        logger.info("model loaded from %s; serving as %s; context %d tokens; engine ready in %.1f s",
                    engine.loaded.path, ", ".join(names), serving.max_model_len, time.monotonic() - started)
        if config.warm_prompts:
            await warm_up(serving, config.warm_prompts)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if registry is None:
            await start_single_model(app)
        else:
            await registry.start()
        if config.preload_extra_models:
            await extra_models.preload()
        app.state.mcp = await start_mcp(config.mcp_config)
        await monitors.start()
        watchdog.start()
        try:
            yield
        finally:
            watchdog.stop()
            await monitors.stop()
            if app.state.mcp is not None:
                await app.state.mcp.stop()
            extra_models.shutdown()
            if registry is None:
                engine.shutdown()
            else:
                await registry.shutdown()

    app = FastAPI(title="vllm-mlx", version="0.1.0", lifespan=lifespan)
    app.state.config = config
    watchdog = app.state.watchdog = EngineWatchdog(
        (lambda: [engine.engine]) if registry is None else registry.running_engines, config.watchdog)
    app.state.extra_models = extra_models
    app.state.responses_store = ResponseStore()  # bounded, for previous_response_id
    app.state.mcp = None  # the MCPManager, started with the engine when --mcp-config is given
    install_error_handlers(app)
    if registry is None:
        app.state.metrics = ServerMetrics(lambda: engine.stats if engine.engine.alive else None)
        engine.metrics = app.state.metrics
    else:
        app.state.model_registry = registry
        app.state.metrics = registry.metrics = ServerMetrics(registry.combined_stats)
        app.state.metrics.registry.register(ModelRegistryCollector(registry))
        app.add_middleware(ModelLeaseMiddleware, registry=registry)
    monitors = app.state.divergence_monitors = DivergenceMonitors(config, app, registry)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    app.add_api_route("/metrics", metrics_endpoint, methods=["GET"], include_in_schema=False)
    app.add_middleware(StreamErrorMiddleware)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=config.limits.max_request_bytes,
                       timeout_s=config.limits.body_timeout_s)
    install_rate_limit(app, config)  # inside the key check: one bucket per valid key
    if config.api_keys:
        app.add_middleware(APIKeyMiddleware, keys=config.api_keys,
                           open_paths=open_paths(config.access.public_metrics, config.access.private_health))
    elif not is_loopback(config.host):
        logger.warning("listening on %s WITHOUT an API key: anyone who can reach this port can use the model. "
                       "Pass --api-key.", config.host)
    install_cors(app, config)  # outermost
    if config.request_log:  # outermost: also sees requests the key check refuses
        app.add_middleware(RequestLogMiddleware, path=config.request_log)
    app.include_router(chat_router)
    app.include_router(openai_router)
    app.include_router(responses_router)
    app.include_router(embeddings_router)
    app.include_router(audio_router)
    app.include_router(anthropic_router)
    app.include_router(mcp_router)
    app.include_router(operator_router)
    app.include_router(request_router)

    @app.get("/health")
    async def health(raw: Request):
        serving: ServingState | None = getattr(raw.app.state, "serving", None)
        ok = registry is not None or (serving is not None and serving.engine.engine.alive)
        body = {"status": "ok" if ok else "unavailable"}
        if not ok and serving is not None and getattr(serving.engine.engine, "problem", None):
            body["reason"] = serving.engine.engine.problem  # --engine-process: died, restarting or failed
        watchdog.check()
        if ok and watchdog.problem():
            ok, body = False, {"status": "unhealthy", "reason": watchdog.problem()}
        if config.api_keys and not raw.scope.get("state", {}).get("authenticated"):
            # liveness only without the key: no model folder, counters or memory for anyone who asks
            return JSONResponse({"status": body["status"]}, status_code=200 if ok else 503)
        if registry is not None:
            body["models"] = registry.snapshot()
        elif serving is not None:
            body["model"] = serving.model_name
            body["engine"] = asdict(serving.engine.stats)
            if serving.admission is not None:
                body["admission"] = serving.admission.stats()
            body["memory"] = process_memory()
        if extra_models.services():
            body["extra_models"] = extra_models.stats()
        if monitors.enabled:
            body["batch_divergence"] = monitors.snapshot()
        return JSONResponse(body, status_code=200 if ok else 503)

    return app
