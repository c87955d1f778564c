"""The FastAPI application: wires the engine, the adapters and the server state together."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from ..config import ServerConfig
from ..models.extra_models import ExtraModels
from ..operator_cli import is_loopback
from .anthropic_routes import router as anthropic_router
from .audio_routes import router as audio_router
from .auth import APIKeyMiddleware, open_paths
from .body_limit import BodySizeLimitMiddleware
from .stream_guard import StreamErrorMiddleware
from .embeddings_routes import router as embeddings_router
from .errors import install_error_handlers
from .mcp_routes import router as mcp_router, start_mcp
from .metrics import MetricsMiddleware, ServerMetrics, metrics_endpoint
from .chat_routes import router as chat_router
from .divergence_monitor import DivergenceMonitors
from .model_registry import ModelRegistry
from .model_registry_wiring import ModelLeaseMiddleware, ModelRegistryCollector
from .openai_routes import router as openai_router
from .operator_routes import install_cors, install_rate_limit, router as operator_router
from .request_log import RequestLogMiddleware
from .request_routes import router as request_router
from .status_routes import install_status_routes
from .responses_convert import ResponseStore
from .responses_routes import router as responses_router
from .watchdog import EngineWatchdog

logger = logging.getLogger("vllm_mlx")


def create_app(config: ServerConfig, group=None) -> FastAPI:
    """``group``: the mx.distributed group when serving with --distributed (this is rank 0)."""
    registry = ModelRegistry.from_config(config, group)  # a single model is a registry of one
    extra_models = ExtraModels.from_sources(  # embedding / speech models: resolved now, loaded on first use
        embedding=config.embedding_model, transcription=config.stt_model, speech=config.tts_model,
        requested_dtype=config.dtype, max_embedding_batch_tokens=config.max_embedding_batch_tokens)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await registry.start()  # the single model loads here (and the divergence monitor probes it)
        if config.preload_extra_models:
            await extra_models.preload()
        app.state.mcp = await start_mcp(config.mcp_config)
        watchdog.start()
        app.state.memory_guard.start()
        try:
            yield
        finally:
            watchdog.stop()
            app.state.memory_guard.stop()
            await monitors.stop()
            if app.state.mcp is not None:
                await app.state.mcp.stop()
            extra_models.shutdown()
            await registry.shutdown()

    app = FastAPI(title="vllm-mlx", version="0.1.0", lifespan=lifespan)
    app.state.config = config
    watchdog = app.state.watchdog = EngineWatchdog(registry.running_engines, config.watchdog)
    app.state.extra_models = extra_models
    app.state.responses_store = ResponseStore()  # bounded, for previous_response_id
    app.state.mcp = None  # the MCPManager, started with the engine when --mcp-config is given
    install_error_handlers(app)
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
    install_status_routes(app, config)  # /v1/status, /health/diagnostics, memory guardrail (inside the key check)
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
        ok = registry.healthy()
        body = {"status": "ok" if ok else "unavailable"}
        if not ok and registry.problem():
            body["reason"] = registry.problem()  # --engine-process: died, restarting, or failed
        watchdog.check()
        if ok and watchdog.problem():
            ok, body = False, {"status": "unhealthy", "reason": watchdog.problem()}
        if config.api_keys and not raw.scope.get("state", {}).get("authenticated"):
            # liveness only without the key: no model folder, counters or memory for anyone who asks
            return JSONResponse({"status": body["status"]}, status_code=200 if ok else 503)
        body.update(registry.health())
        if extra_models.services():
            body["extra_models"] = extra_models.stats()
        if monitors.enabled:
            body["batch_divergence"] = monitors.snapshot()
        return JSONResponse(body, status_code=200 if ok else 503)

    return app
