"""Resolved server configuration (what the CLI flags produce)."""

from __future__ import annotations

from dataclasses import dataclass, field


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
    warm_prompts: str | None = None
    # models served beside the chat model (folders or repo ids), loaded on first use
    embedding_model: str | None = None
    stt_model: str | None = None
    tts_model: str | None = None
    preload_extra_models: bool = False
    max_embedding_batch_tokens: int = 8192  # padded tokens of one coalesced embedding forward
    max_audio_upload_bytes: int = 25 * 1024 * 1024
    sampling_defaults: SamplingDefaults = field(default_factory=SamplingDefaults)
    log_level: str = "info"
    request_log: str | None = None  # JSONL file: one summary line per HTTP request (api/request_log.py)
    shutdown_timeout: float = 30.0  # SIGTERM: drain window before remaining requests are ended
    extra: dict = field(default_factory=dict)
