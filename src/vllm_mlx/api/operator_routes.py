"""Operator features of the app: /v1/capabilities, the web page at /, rate limiting and CORS."""

from __future__ import annotations

from dataclasses import asdict
from functools import lru_cache
from importlib import resources

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.middleware.cors import CORSMiddleware

from ..config import ServerConfig
from .model_registry import serving_for
from .rate_limit import RateLimitMiddleware

router = APIRouter()

CHAT_ENDPOINTS = ["/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/messages",
                  "/v1/messages/count_tokens", "/v1/models"]


def install_rate_limit(app: FastAPI, config: ServerConfig) -> None:
    """Call before adding the API-key middleware, so the limiter sits inside it."""
    if config.rate_limit:
        app.add_middleware(RateLimitMiddleware, per_minute=config.rate_limit, by_key=bool(config.api_keys))


def install_cors(app: FastAPI, config: ServerConfig) -> None:
    """Call last: CORS must be outermost so preflights and error responses carry its headers."""
    if config.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins),
                           allow_methods=list(config.cors_methods), allow_headers=list(config.cors_headers),
                           allow_credentials=config.cors_allow_credentials,
                           expose_headers=["Retry-After", "x-request-id"],
                           max_age=600)


@lru_cache(maxsize=1)
def page_html() -> str:
    return resources.files("vllm_mlx.api").joinpath("static/index.html").read_text(encoding="utf-8")


def wants_html(raw: Request) -> bool:
    """A browser asks for HTML first; API clients and probes (Accept: */* or JSON) get the JSON answer."""
    accept = raw.headers.get("accept", "")
    return "text/html" in accept.split(",")[0] or accept.startswith("text/html")


def page_response() -> HTMLResponse:
    return HTMLResponse(page_html(), headers={"Cache-Control": "no-cache"})


@router.api_route("/ui", methods=["GET", "HEAD"], include_in_schema=False)
async def ui_page():
    """The web page under a path of its own (/ serves it too, to browsers)."""
    return page_response()


@router.get("/v1/capabilities")
async def capabilities(raw: Request):
    model = raw.query_params.get("model")  # several models: which one (the single model: any or none)
    serving = await serving_for(raw, model)
    config: ServerConfig = raw.app.state.config
    extra = raw.app.state.extra_models
    kinds = {s.kind: s.name for s in extra.services()}
    engine = serving.engine.engine
    vision = serving.vision
    media = ([] if vision is None else ["image", "video"] if vision.info.supports_video else ["image"])
    return JSONResponse({
        "object": "capabilities",
        "model": {"id": serving.model_name, "aliases": list(serving.aliases), "source": raw.app.state.model_registry.entry(model).spec.source,
                  "multimodal": vision is not None},
        "modalities": {"input": ["text", *media], "output": ["text"],
                       "embeddings": "embedding" in kinds, "speech_to_text": "transcription" in kinds,
                       "text_to_speech": "speech" in kinds},
        "extra_models": kinds,
        "endpoints": CHAT_ENDPOINTS + _extra_endpoints(kinds),
        "parsers": {"tool_calls": serving.tool_parser, "reasoning": serving.reasoning_parser,
                    "tool_call_parser_flag": config.tool_call_parser, "reasoning_parser_flag": config.reasoning_parser},
        "context": {"max_model_len": serving.max_model_len, "default_max_tokens": serving.default_max_tokens},
        "limits": {"max_num_seqs": config.max_num_seqs, "max_num_batched_tokens": config.max_num_batched_tokens,
                   "rate_limit_per_minute": config.rate_limit,
                   "max_audio_upload_bytes": config.max_audio_upload_bytes},
        "auth": {"mode": "api_key" if config.api_keys else "none",
                 "headers": ["Authorization: Bearer KEY", "x-api-key: KEY"] if config.api_keys else [],
                 "open_routes": ["/", "/ui", "/health"]},
        "cors": {"origins": list(config.cors_origins)},
        "sampling_defaults": asdict(config.sampling_defaults),
        "features": {
            "streaming": True, "tool_calls": True, "structured_output": True, "logprobs": True,
            "prefix_cache": config.prefix_cache, "kv_cache_bits": config.kv_cache_bits,
            "persistent_kv_cache": config.kv_cache_dir is not None, "deterministic": config.deterministic,
            "strict_model_id": config.strict_model_id,
            "speculative_decoding": getattr(engine.config, "speculative", "off"),  # the method chosen (auto)
            "batch_divergence_monitor": config.batch_divergence_monitor,
            "batch_divergence_action": config.batch_divergence_action if config.batch_divergence_monitor else None,
        },
        "profile": config.profile,
        "client": config.client,
        "engine": {"alive": engine.alive, "backend": _backend(serving)},
    })


def _extra_endpoints(kinds: dict) -> list[str]:
    out = []
    if "embedding" in kinds:
        out += ["/v1/embeddings", "/v1/rerank"]
    if "transcription" in kinds:
        out += ["/v1/audio/transcriptions", "/v1/audio/translations"]
    if "speech" in kinds:
        out += ["/v1/audio/speech", "/v1/audio/voices"]
    return out


def _backend(serving) -> str | None:
    loaded = getattr(serving.engine, "loaded", None)
    backend = getattr(loaded, "backend", None)
    return backend.describe() if backend is not None else None
