"""Resolved server configuration: the typed object the server is built from.

Every default comes from the option table (:mod:`vllm_mlx.options`); :func:`server_config` builds
the object from resolved option values.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from .limits import AccessConfig, Limits, WatchdogConfig
from .media.audio import AudioLimits
from .media.decode import MediaLimits
from .media.fetch import FetchPolicy
from .options import BATCH_DIVERGENCE_ACTIONS, DEFAULTS as D

__all__ = ["BATCH_DIVERGENCE_ACTIONS", "SamplingDefaults", "ServerConfig", "server_config"]

MiB = 2**20


@dataclass(frozen=True)
class SamplingDefaults:
    """Server-side defaults, used only for fields a request omits (--default-<field>)."""

    temperature: float = D.default_temperature
    top_p: float = D.default_top_p
    top_k: int = D.default_top_k
    min_p: float = D.default_min_p
    presence_penalty: float = D.default_presence_penalty
    frequency_penalty: float = D.default_frequency_penalty
    repetition_penalty: float = D.default_repetition_penalty
    max_thinking_tokens: int | None = D.default_max_thinking_tokens  # reasoning budget (no effort, no field)


@dataclass(frozen=True)
class ServerConfig:
    model: str | None = D.model  # None = the built-in demo model
    served_model_names: tuple[str, ...] = ()  # --served-model-name
    host: str = D.host
    port: int = D.port
    max_num_seqs: int = D.max_num_seqs
    max_num_batched_tokens: int = D.max_num_batched_tokens
    max_tokens: int = D.max_tokens  # default completion length when a request gives none
    max_model_len: int | None = D.max_model_len  # None = from the model config
    dtype: str = D.dtype
    trust_remote_code: bool = D.trust_remote_code
    api_keys: tuple[str, ...] = ()  # --api-key; required on every route but /health when set
    strict_model_id: bool = D.strict_model_id
    tool_call_parser: str = D.tool_call_parser  # a parser name, "auto" (from the chat template) or "none"
    reasoning_parser: str = D.reasoning_parser
    deterministic: bool = D.deterministic
    speculative: str = D.speculative  # auto: draft with draft_model, else ngram where the model allows
    draft_model: str | None = D.draft_model
    num_speculative_tokens: int | None = D.num_speculative_tokens  # None: SPECULATIVE_TOKENS when speculating
    prefix_cache: bool = D.prefix_cache
    cache_memory_mb: int | None = D.cache_memory_mb
    cache_memory_fraction: float = D.cache_memory_fraction
    prefix_block_size: int = D.prefix_block_size
    kv_cache_bits: int | None = D.kv_cache_bits
    kv_cache_dir: str | None = D.kv_cache_dir
    kv_cache_dir_mb: int = D.kv_cache_dir_mb
    checkpoint_stride: int = D.checkpoint_stride  # recurrent / sliding-window models: checkpoint long prompts
    verify_cache_restores: float = D.verify_cache_restores  # share of cache restores re-checked by a prefill
    warm_prompts: str | None = D.warm_prompts
    # models served beside the chat model (folders or repo ids), loaded on first use
    embedding_model: str | None = D.embedding_model
    stt_model: str | None = D.stt_model
    tts_model: str | None = D.tts_model
    preload_extra_models: bool = D.preload_extra_models
    max_embedding_batch_tokens: int = D.max_embedding_batch_tokens  # padded tokens of one embedding forward
    max_audio_upload_bytes: int = int(D.max_audio_upload_mb * MiB)
    audio_limits: AudioLimits = field(default_factory=AudioLimits)  # checked on the header, before decoding
    media_fetch: FetchPolicy = field(default_factory=FetchPolicy)  # how request media URLs are fetched
    media_limits: MediaLimits = field(default_factory=MediaLimits)  # decoded image/video limits
    mllm: bool = D.mllm  # load the model as a vision-language model even if its metadata does not say so
    text_only: bool = D.text_only  # serve a vision-language folder's language model as text (mlx-lm), no images
    vision_cache_mb: int = D.vision_cache_mb  # vision-embedding cache budget (by image content hash)
    sampling_defaults: SamplingDefaults = field(default_factory=SamplingDefaults)
    log_level: str = D.log_level
    request_log: str | None = D.request_log  # JSONL file: one summary line per HTTP request (api/request_log.py)
    shutdown_timeout: float = D.shutdown_timeout  # SIGTERM: drain window before remaining requests are ended
    mcp_config: str | None = D.mcp_config  # the MCP servers file (mcpServers + policy); None = no MCP
    mcp_auto: bool = D.mcp_auto  # run the server-side MCP tool loop for requests that do not say "mcp"
    sse_keepalive: float = D.sse_keepalive  # seconds between keepalives while a stream waits (0: off)
    request_timeout: float | None = D.request_timeout  # --timeout: a non-streamed request past it gets 504
    # memory guardrail (api/memory_guard.py): percent of the machine's memory this process uses
    memory_action: str = D.memory_action
    memory_warn_threshold: float = D.memory_warn_threshold
    memory_limit_threshold: float = D.memory_limit_threshold
    memory_monitor_interval: float = D.memory_monitor_interval
    # operator settings (profiles.py, config_file.py, api/rate_limit.py, api/operator_routes.py)
    profile: str | None = D.profile  # serving profile the settings came from, reported by /v1/capabilities
    client: str | None = D.client  # client profile
    rate_limit: int | None = D.rate_limit  # requests per minute per API key (or client IP without keys)
    cors_origins: tuple[str, ...] = D.cors_origins
    cors_methods: tuple[str, ...] = D.cors_methods
    cors_headers: tuple[str, ...] = D.cors_headers
    cors_allow_credentials: bool = D.cors_allow_credentials
    # batch-divergence monitor (see docs/divergence-monitor.md)
    batch_divergence_monitor: bool = D.batch_divergence_monitor
    batch_divergence_threshold: float = D.batch_divergence_threshold
    batch_divergence_action: str = D.batch_divergence_action  # one of BATCH_DIVERGENCE_ACTIONS
    batch_divergence_interval: float = D.batch_divergence_interval  # seconds between probes; 0 = at startup only
    # multi-model serving (see docs/model-lifecycle.md): "name=model" entries (or {name: model} items)
    models: tuple = ()  # --models
    lora: tuple = ()  # --lora: (name, adapter folder) pairs, checked (engine/lora.py parse_lora_specs)
    max_loras: int | None = D.max_loras  # None: MAX_LORAS with --lora
    model_ttl: float | None = D.model_ttl  # idle seconds before a model is unloaded; None = never
    models_memory_gb: float | None = D.models_memory_gb  # bound on the weights of all loaded models
    preload_models: bool = D.preload_models
    distributed: bool = D.distributed  # one model over the ranks of an mlx.launch job (docs/distributed.md)
    distributed_timeout: float = D.distributed_timeout  # an engine step or exchange longer than this ends the job
    distributed_parallelism: str = D.distributed_parallelism  # tensor (shard()) when the model has it, else pipeline
    limits: Limits = field(default_factory=Limits)  # request limits and memory admission
    engine_process: bool = D.engine_process  # the engine in a child process (engine/process_client.py)
    engine_restarts: int | None = D.engine_restarts  # restarts in a row of a crashed engine process (None: 3)
    watchdog: WatchdogConfig = field(default_factory=WatchdogConfig)
    access: AccessConfig = field(default_factory=AccessConfig)  # which routes skip the API key
    extra: dict = field(default_factory=dict)


def _tuple(value: Any) -> tuple:
    return tuple(value or ())


def server_config(v: Mapping[str, Any]) -> ServerConfig:
    """The ServerConfig of resolved, checked option values (options.check_settings): fields named
    like an option take its value; the rest are assembled here."""
    same = {f.name: v[f.name] for f in fields(ServerConfig) if f.name in v}
    for name in ("cors_origins", "cors_methods", "cors_headers", "models", "lora"):
        same[name] = _tuple(v[name])
    return ServerConfig(
        **same,
        served_model_names=_tuple(v["served_model_name"]),
        api_keys=_tuple(v["api_key"]),
        max_audio_upload_bytes=int(v["max_audio_upload_mb"] * MiB),
        audio_limits=AudioLimits(max_seconds=v["max_audio_seconds"], min_sample_rate=v["min_audio_sample_rate"]),
        media_fetch=FetchPolicy(
            max_bytes=int(v["media_max_mb"] * MiB), timeout_s=v["media_timeout"],
            allow_private=v["media_allow_private"],
            allowed_hosts=frozenset(h.lower() for h in v["media_allowed_hosts"]),
            allowed_local_dir=Path(v["media_local_dir"]) if v["media_local_dir"] else None),
        media_limits=MediaLimits(max_image_pixels=v["max_image_pixels"], max_images=v["max_media_per_request"],
                                 video_fps=v["video_fps"], video_max_frames=v["video_max_frames"],
                                 max_request_pixels=v["max_request_pixels"]),
        sampling_defaults=SamplingDefaults(**{f.name: v[f"default_{f.name}"] for f in fields(SamplingDefaults)}),
        limits=Limits(
            max_request_bytes=v["max_request_bytes"], max_messages=v["max_messages"], max_tools=v["max_tools"],
            max_tokens_cap=v["max_tokens_cap"], max_prompt_tokens=v["max_prompt_tokens"],
            max_prompts=v["max_prompts"],
            memory_budget_bytes=None if v["memory_budget_mb"] is None else int(v["memory_budget_mb"] * MiB),
            memory_budget_fraction=v["memory_budget_fraction"], admission_wait_s=v["admission_wait"],
            header_timeout_s=v["header_timeout"], body_timeout_s=v["body_timeout"],
            write_timeout_s=v["write_timeout"], stream_buffer_bytes=int(v["stream_buffer_mb"] * MiB),
            stream_buffer_events=v["stream_buffer_events"]),
        watchdog=WatchdogConfig(stall_s=v["watchdog_stall"], exit_s=v["watchdog_exit"]),
        access=AccessConfig(public_metrics=v["public_metrics"], private_health=v["private_health"]),
    )
