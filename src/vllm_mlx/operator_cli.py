"""`vllm-mlx serve` with profiles and config files, `vllm-mlx profiles` and `vllm-mlx doctor`."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys
from pathlib import Path
from typing import Callable

from .client_setup import Endpoint, client_instructions, client_url
from .config import ServerConfig, server_config
from .config_file import ConfigError, fail, format_settings, resolve_serve_settings
from .models.context import read_context_length
from .options import DEFAULTS
from .profiles import (CLIENT_ALIASES, CLIENT_PROFILES, SERVING_PROFILES, client_profile, describe_settings,
                       list_profiles)

logger = logging.getLogger("vllm_mlx")

OPERATOR_COMMANDS = ("profiles", "doctor")


def add_operator_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("profiles", help="list serving and client profiles and what they set")
    p.add_argument("name", nargs="?", default=None,
                   help="show one profile; for a client profile, also the client-side settings")
    d = sub.add_parser("doctor", help="check the machine (backend, BLAS, memory, versions) and optionally a model")
    d.add_argument("model", nargs="?", default=None, help="a local model folder or a cached Hugging Face repo id")
    d.add_argument("--json", action="store_true", help="machine-readable output")
    d.add_argument("--trust-remote-code", action="store_true", help="accept models that name a custom model file")


def run_operator_command(args: argparse.Namespace) -> int:
    if args.command == "profiles":
        return _profiles(args.name)
    from .doctor import run_doctor

    return run_doctor(args.model, as_json=args.json, trust_remote_code=args.trust_remote_code)


def _profiles(name: str | None) -> int:
    if name is None:
        print(list_profiles())
        return 0
    if name in SERVING_PROFILES:
        p = SERVING_PROFILES[name]
        print(f"{p.name}: {p.summary}\nsets: {describe_settings(p.settings)}")
        return 0
    if name in CLIENT_PROFILES or name in CLIENT_ALIASES:
        c = client_profile(name)
        print(f"{c.name}: {c.summary}\nsets: {describe_settings(c.settings)}\n")
        print(client_instructions(c, Endpoint(client_url(DEFAULTS.host, DEFAULTS.port), "MODEL", auth=False)))
        return 0
    return fail(ConfigError(f"no profile named {name!r}; `vllm-mlx profiles` lists them"))


class SettingsExit(SystemExit):
    """A bad serve setting: exit status 2 (as for argparse errors), the message printed on one line
    before; ``str()`` is the message."""

    def __init__(self, message: str):
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


def serve_main(argv: list[str], run_server: Callable[[ServerConfig], int]) -> int:
    """`vllm-mlx serve` with ``argv`` the arguments after `serve`: settings resolved and checked
    (also for --print-config); a bad one exits 2 with one line naming it."""
    try:
        resolved = resolve_serve_settings(list(argv))
    except ConfigError as exc:
        print(f"vllm-mlx serve: error: {exc}", file=sys.stderr)
        raise SettingsExit(str(exc)) from None
    for note in resolved.notes:
        print(f"vllm-mlx serve: note: {note}", file=sys.stderr)
    if resolved.values["print_config"]:
        print(format_settings(resolved, resolved.values["print_format"]))
        return 0
    config = server_config(resolved.values)
    warn_if_exposed(config)
    if config.client:
        print(client_instructions(client_profile(config.client), endpoint_for(config)), flush=True)
    return run_server(config)


def served_name(config: ServerConfig) -> str:
    """The model id clients should send, known before loading (mirrors app.resolve_model)."""
    if config.served_model_names:
        return config.served_model_names[0]
    if config.model is None:
        from .models.demo import DEMO_MODEL_NAME

        return DEMO_MODEL_NAME
    name = config.model.rstrip("/")
    return Path(name).name if Path(name).expanduser().exists() else name


def context_hint(config: ServerConfig) -> int | None:
    """The context budget when it can be read without loading or downloading: --max-model-len, else the
    model's config.json (a local folder, or a repo id already in the Hugging Face cache)."""
    if config.max_model_len:
        return config.max_model_len
    if config.model is None:
        return None
    local = Path(config.model).expanduser() / "config.json"
    path: Path | None = local if local.is_file() else None
    if path is None and config.model.count("/") == 1 and not config.model.startswith((".", "/", "~")):
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(config.model, "config.json")
        path = Path(cached) if isinstance(cached, str) else None
    return None if path is None else read_context_length(path)


def endpoint_for(config: ServerConfig) -> Endpoint:
    return Endpoint(client_url(config.host, config.port), served_name(config), auth=bool(config.api_keys),
                    context=context_hint(config), max_output=config.max_tokens)


def is_loopback(host: str) -> bool:
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def warn_if_exposed(config: ServerConfig) -> None:
    """A loud warning when the server is reachable beyond this machine without an API key."""
    if config.api_keys or is_loopback(config.host):
        return
    bar = "!" * 78
    print(f"{bar}\n!! WARNING: listening on {config.host}:{config.port} WITHOUT an API key.\n"
          f"!! Anyone who can reach this port can use the model. Pass --api-key KEY (or set\n"
          f"!! VLLM_MLX_API_KEY), or bind to 127.0.0.1 (the default).\n{bar}", file=sys.stderr, flush=True)
