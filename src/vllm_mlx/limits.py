"""Request limits, memory admission and the engine watchdog: their settings and command-line flags.

Every limit has a safe default and one flag; a request beyond a limit gets a 4xx in its API's own
error shape (413 for a body that is too large, 400 naming the limit otherwise).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    max_request_bytes: int = 32 * 1024 * 1024  # whole HTTP request body; 413 above
    max_messages: int = 4096  # chat messages (Anthropic messages, Responses input items) per request
    max_tools: int = 512  # tool definitions per request
    max_tokens_cap: int | None = None  # largest max_tokens a request may ask for; None: the context budget
    max_prompt_tokens: int | None = None  # longest prompt; None: the context budget
    max_prompts: int = 256  # prompts in one /v1/completions request (each is a generation)
    # Memory-aware admission: KV-cache bytes all admitted requests may need together.
    memory_budget_bytes: int | None = None  # None: memory_budget_fraction of the memory free after loading
    memory_budget_fraction: float = 0.8
    admission_wait_s: float = 5.0  # how long a request waits for room before it gets 503 + Retry-After
    # Slow clients (api/connection_guard.py): each phase of a connection has a deadline.
    header_timeout_s: float = 10.0  # a request's headers, from the connection (or the request's first byte)
    body_timeout_s: float = 120.0  # the whole request body, once the headers are in; 408 past it
    write_timeout_s: float = 60.0  # a client that reads none of a waiting response for this long is cut
    # Undelivered output of one streamed request (engine deltas the client has not taken yet); past
    # either bound the request is stopped in the engine (engine/async_engine.py).
    stream_buffer_bytes: int = 16 * 1024 * 1024
    stream_buffer_events: int = 16384


@dataclass(frozen=True)
class WatchdogConfig:
    stall_s: float = 60.0  # an engine step running longer than this marks /health unhealthy (503)
    exit_s: float = 0.0  # a step running longer than this shuts the server down (0: never)
    interval_s: float = 1.0  # how often the watchdog looks


@dataclass(frozen=True)
class AccessConfig:
    public_metrics: bool = False  # /metrics without the API key
    private_health: bool = False  # /health behind the API key too


def _positive_or_none(value: str) -> int | None:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError("must be 0 (no limit beyond the context budget) or positive")
    return number or None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("limits and reliability")
    g.add_argument("--max-request-bytes", type=int, default=Limits.max_request_bytes,
                   help="largest HTTP request body; larger ones get 413 (default: %(default)s)")
    g.add_argument("--max-messages", type=int, default=Limits.max_messages,
                   help="most messages (or input items) in one request (default: %(default)s)")
    g.add_argument("--max-tools", type=int, default=Limits.max_tools,
                   help="most tool definitions in one request (default: %(default)s)")
    g.add_argument("--max-tokens-cap", type=_positive_or_none, default=None,
                   help="reject requests whose max_tokens exceeds this (default: only the context budget)")
    g.add_argument("--max-prompt-tokens", type=_positive_or_none, default=None,
                   help="reject prompts longer than this (default: only the context budget)")
    g.add_argument("--max-prompts", type=int, default=Limits.max_prompts,
                   help="most prompts in one /v1/completions request (default: %(default)s)")
    g.add_argument("--memory-budget-mb", type=float, default=None,
                   help="KV-cache memory all admitted requests may need together; beyond it requests wait, "
                        "then get 503 with Retry-After (default: --memory-budget-fraction of free memory)")
    g.add_argument("--memory-budget-fraction", type=float, default=Limits.memory_budget_fraction)
    g.add_argument("--admission-wait", type=float, default=Limits.admission_wait_s,
                   help="seconds a request waits for memory before 503 (default: %(default)s)")
    g.add_argument("--header-timeout", type=float, default=Limits.header_timeout_s,
                   help="seconds a client has to send a request's headers; slower connections are closed "
                        "(default: %(default)s)")
    g.add_argument("--body-timeout", type=float, default=Limits.body_timeout_s,
                   help="seconds a client has to send a request's body once its headers are in; past it 408 and "
                        "the connection is closed (default: %(default)s)")
    g.add_argument("--write-timeout", type=float, default=Limits.write_timeout_s,
                   help="a connection whose client reads nothing of a waiting response for this many seconds is "
                        "closed (default: %(default)s)")
    g.add_argument("--stream-buffer-mb", type=float, default=Limits.stream_buffer_bytes / 2**20,
                   help="output a streamed request may have waiting for a slow client, in MiB; past it the request "
                        "is stopped (default: %(default)s)")
    g.add_argument("--stream-buffer-events", type=int, default=Limits.stream_buffer_events,
                   help="deltas a streamed request may have waiting for a slow client; past it the request is "
                        "stopped (default: %(default)s)")
    g.add_argument("--watchdog-stall", type=float, default=WatchdogConfig.stall_s,
                   help="an engine step longer than this marks /health 503 until it moves (default: %(default)s)")
    g.add_argument("--watchdog-exit", type=float, default=WatchdogConfig.exit_s,
                   help="a step longer than this shuts the server down cleanly (default: 0 = never)")
    g.add_argument("--public-metrics", action="store_true", help="serve /metrics without the API key")
    g.add_argument("--private-health", action="store_true", help="require the API key on /health too")


def from_args(args: argparse.Namespace) -> dict:
    """ServerConfig fields from the flags above."""
    for name in ("max_request_bytes", "max_messages", "max_tools", "max_prompts", "stream_buffer_events"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be at least 1")
    if args.memory_budget_mb is not None and args.memory_budget_mb <= 0:
        raise SystemExit("--memory-budget-mb must be positive")
    if not 0 < args.memory_budget_fraction <= 1:
        raise SystemExit("--memory-budget-fraction must be in (0, 1]")
    if args.watchdog_stall <= 0 or args.watchdog_exit < 0 or args.admission_wait < 0:
        raise SystemExit("--watchdog-stall must be positive; --watchdog-exit and --admission-wait not negative")
    for name in ("header_timeout", "body_timeout", "write_timeout", "stream_buffer_mb"):
        if not getattr(args, name) > 0:
            raise SystemExit(f"--{name.replace('_', '-')} must be positive")
    limits = Limits(
        max_request_bytes=args.max_request_bytes, max_messages=args.max_messages, max_tools=args.max_tools,
        max_tokens_cap=args.max_tokens_cap, max_prompt_tokens=args.max_prompt_tokens, max_prompts=args.max_prompts,
        memory_budget_bytes=None if args.memory_budget_mb is None else int(args.memory_budget_mb * 2**20),
        memory_budget_fraction=args.memory_budget_fraction, admission_wait_s=args.admission_wait,
        header_timeout_s=args.header_timeout, body_timeout_s=args.body_timeout, write_timeout_s=args.write_timeout,
        stream_buffer_bytes=int(args.stream_buffer_mb * 2**20), stream_buffer_events=args.stream_buffer_events,
    )
    return {"limits": limits, "watchdog": WatchdogConfig(stall_s=args.watchdog_stall, exit_s=args.watchdog_exit),
            "access": AccessConfig(public_metrics=args.public_metrics, private_health=args.private_health)}
