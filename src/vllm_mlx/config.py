"""Resolved server configuration (what the CLI flags produce)."""

from __future__ import annotations

from dataclasses import dataclass, field


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
    log_level: str = "info"
    extra: dict = field(default_factory=dict)
