"""Request limits, memory admission and the engine watchdog: their settings.

Every limit has a safe default and one flag, both declared in the option table
(:mod:`vllm_mlx.options.table`); a request beyond a limit gets a 4xx in its API's own error shape
(413 for a body that is too large, 400 naming the limit otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass

from .options import DEFAULTS as D

MiB = 2**20


@dataclass(frozen=True)
class Limits:
    max_request_bytes: int = D.max_request_bytes  # whole HTTP request body; 413 above
    max_messages: int = D.max_messages  # chat messages (Anthropic messages, Responses input items) per request
    max_tools: int = D.max_tools  # tool definitions per request
    max_tokens_cap: int | None = D.max_tokens_cap  # largest max_tokens a request may ask for; None: the context budget
    max_prompt_tokens: int | None = D.max_prompt_tokens  # longest prompt; None: the context budget
    max_prompts: int = D.max_prompts  # prompts in one /v1/completions request (each is a generation)
    # Memory-aware admission: KV-cache bytes all admitted requests may need together.
    memory_budget_bytes: int | None = None  # None: memory_budget_fraction of the memory free after loading
    memory_budget_fraction: float = D.memory_budget_fraction
    admission_wait_s: float = D.admission_wait  # how long a request waits for room before it gets 503 + Retry-After
    # Slow clients (api/connection_guard.py): each phase of a connection has a deadline.
    header_timeout_s: float = D.header_timeout  # a request's headers, from the connection (or the request's first byte)
    body_timeout_s: float = D.body_timeout  # the whole request body, once the headers are in; 408 past it
    write_timeout_s: float = D.write_timeout  # a client that reads none of a waiting response for this long is cut
    # Undelivered output of one streamed request (engine deltas the client has not taken yet); past
    # either bound the request is stopped in the engine (engine/async_engine.py).
    stream_buffer_bytes: int = int(D.stream_buffer_mb * MiB)
    stream_buffer_events: int = D.stream_buffer_events


@dataclass(frozen=True)
class WatchdogConfig:
    stall_s: float = D.watchdog_stall  # an engine step running longer than this marks /health unhealthy (503)
    exit_s: float = D.watchdog_exit  # a step running longer than this shuts the server down (0: never)
    interval_s: float = 1.0  # how often the watchdog looks


@dataclass(frozen=True)
class AccessConfig:
    public_metrics: bool = D.public_metrics  # /metrics without the API key
    private_health: bool = D.private_health  # /health behind the API key too
