"""Resolved server configuration (what the CLI flags produce)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .media.audio import AudioLimits
from .media.decode import MediaLimits
from .media.fetch import FetchPolicy
from .limits import AccessConfig, Limits, WatchdogConfig


BATCH_DIVERGENCE_ACTIONS = ("warn", "serialize")


@dataclass(frozen=True)
class SamplingDefaults:
    """Server-side defaults, used only for fields a request omits."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0


@dataclass(frozen=True)
class ServerConfig:
    model: str | None = None  # None = the built-in demo model
    served_model_names: tuple[str, ...] = ()
    host: str = "127.0.0.1"
    port: int = 8000
    max_num_seqs: int = 32
    max_num_batched_tokens: int = 2048
    max_tokens: int = 512  # default completion length when a request gives none
    max_model_len: int | None = None  # None = from the model config
    dtype: str = "auto"
    trust_remote_code: bool = False
    api_keys: tuple[str, ...] = ()  # required on every route but /health when set
    strict_model_id: bool = False
    tool_call_parser: str = "auto"  # a parser name, "auto" (from the chat template) or "none"
    reasoning_parser: str = "auto"
    deterministic: bool = False
    prefix_cache: bool = True
    cache_memory_mb: int | None = None
    cache_memory_fraction: float = 0.25
    prefix_block_size: int = 64
    kv_cache_bits: int | None = None
    kv_cache_dir: str | None = None
    kv_cache_dir_mb: int = 4096
    checkpoint_stride: int = 4096  # recurrent / sliding-window models: checkpoint long prompts this often
    verify_cache_restores: float = 0.0  # fraction of cache restores re-checked against a fresh prefill
    warm_prompts: str | None = None
    # models served beside the chat model (folders or repo ids), loaded on first use
    embedding_model: str | None = None
    stt_model: str | None = None
    tts_model: str | None = None
    preload_extra_models: bool = False
    max_embedding_batch_tokens: int = 8192  # padded tokens of one coalesced embedding forward
    max_audio_upload_bytes: int = 25 * 1024 * 1024
    audio_limits: AudioLimits = field(default_factory=AudioLimits)  # checked on the header, before decoding
    media_fetch: FetchPolicy = field(default_factory=FetchPolicy)  # how request media URLs are fetched
    media_limits: MediaLimits = field(default_factory=MediaLimits)  # decoded image/video limits
    mllm: bool = False  # load the model as a vision-language model even if its metadata does not say so
    text_only: bool = False  # serve a vision-language folder's language model as text (mlx-lm), no images
    vision_cache_mb: int = 512  # vision-embedding cache budget (by image content hash)
    sampling_defaults: SamplingDefaults = field(default_factory=SamplingDefaults)
    log_level: str = "info"
    request_log: str | None = None  # JSONL file: one summary line per HTTP request (api/request_log.py)
    shutdown_timeout: float = 30.0  # SIGTERM: drain window before remaining requests are ended
    mcp_config: str | None = None  # the MCP servers file (mcpServers + policy); None = no MCP
    mcp_auto: bool = False  # run the server-side MCP tool loop for requests that do not say "mcp"
    sse_keepalive: float = 15.0  # seconds between keepalives while a stream waits for its first token (0: off)
    # operator settings (profiles.py, config_file.py, api/rate_limit.py, api/operator_routes.py)
    profile: str | None = None  # serving profile the settings came from, reported by /v1/capabilities
    client: str | None = None  # client profile
    rate_limit: int | None = None  # requests per minute per API key (or client IP without keys)
    cors_origins: tuple[str, ...] = ()
    cors_methods: tuple[str, ...] = ("GET", "POST", "OPTIONS")
    cors_headers: tuple[str, ...] = ("Authorization", "Content-Type", "x-api-key", "anthropic-version", "anthropic-beta")
    cors_allow_credentials: bool = False
    # batch-divergence monitor (see docs/divergence-monitor.md)
    batch_divergence_monitor: bool = False
    batch_divergence_threshold: float = 0.95
    batch_divergence_action: str = "warn"  # "warn" or "serialize"
    batch_divergence_interval: float = 300.0  # seconds between probes; 0 = at startup only
    # multi-model serving (see docs/model-lifecycle.md): "name=model" entries (or {name: model} items)
    models: tuple = ()
    model_ttl: float | None = None  # idle seconds before a model is unloaded; None = never
    models_memory_gb: float | None = None  # bound on the weights of all loaded models
    preload_models: bool = False
    distributed: bool = False  # one model over the ranks of an mlx.launch job (docs/distributed.md)
    distributed_timeout: float = 60.0  # an engine step or exchange longer than this ends the job
    distributed_parallelism: str = "auto"  # tensor (shard()) when the model has it, else pipeline
    limits: Limits = field(default_factory=Limits)  # request limits and memory admission
    watchdog: WatchdogConfig = field(default_factory=WatchdogConfig)
    access: AccessConfig = field(default_factory=AccessConfig)  # which routes skip the API key
    extra: dict = field(default_factory=dict)
