"""`vllm-mlx serve` settings from layers: defaults < --profile < --client < --config FILE < flags.

Every serve option (options/table.py) can be set in a TOML or YAML file; keys are the option names
with ``-`` or ``_`` (``max-num-seqs``, ``max_num_seqs``) or one of its flags (``no-prefix-cache =
true``). An unknown key, a wrong type, a value outside an option's choices or one its checks refuse
is an error naming the file and key. The resolved values are checked by options.check_settings,
also under --print-config.
"""

from __future__ import annotations

import json
import os
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .options import DEFAULTS, OPTIONS, OptionError, check_settings, serve_parser, setting
from .options.seed_flags import translate_seed_args
from .profiles import ProfileError, client_profile, serving_profile

ConfigError = OptionError  # what a bad config file, profile or setting raises
REDACTED = "<redacted>"
API_KEY_ENV = "VLLM_MLX_API_KEY"
COMMAND_LINE, DEFAULT, ENV = "command line", "default", f"${API_KEY_ENV}"


def load_config_file(path: str) -> dict:
    file = Path(path).expanduser()
    try:
        text = file.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}")
    try:
        if file.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        elif file.suffix.lower() == ".toml":
            data = tomllib.loads(text)
        else:
            raise ConfigError(f"config file {path}: use a .toml, .yaml or .yml file")
    except (tomllib.TOMLDecodeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"config file {path} is not valid {file.suffix[1:].upper()}: {exc}")
    except Exception as exc:  # yaml.YAMLError
        raise ConfigError(f"config file {path} is not valid YAML: {exc}")
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: the top level must be a table/mapping of settings")
    return data


@dataclass
class Resolved:
    values: dict[str, Any]  # every serve option by name, resolved and checked
    sources: dict[str, str] = field(default_factory=dict)  # option -> where its value came from
    notes: list[str] = field(default_factory=list)  # flags of vllm-mlx 0.2.x that mean nothing more here

    @property
    def namespace(self):
        """The values as attributes (``resolved.namespace.max_num_seqs``)."""
        from types import SimpleNamespace

        return SimpleNamespace(**self.values)


def resolve_serve_settings(argv: list[str], environ: dict[str, str] | None = None) -> Resolved:
    """The serve settings of ``argv`` (the arguments after `serve`), layered and checked."""
    environ = os.environ if environ is None else environ
    argv, notes = translate_seed_args(argv)  # flags of vllm-mlx 0.2.x: mapped to ours, or refused
    given = vars(serve_parser(suppress_defaults=True).parse_args(argv))  # only what the command line gave
    config_path = given.get("config")
    file_layer = _layer(load_config_file(config_path), f"config file {config_path}") if config_path else {}
    profile_name = given.get("profile", file_layer.get("profile", (None,))[0])
    client_name = given.get("client", file_layer.get("client", (None,))[0])
    layers: list[tuple[str, str, dict[str, tuple[Any, str]]]] = []  # (source, where errors say, name -> value, key)
    if environ.get(API_KEY_ENV):
        layers.append((ENV, ENV, {"api_key": ([environ[API_KEY_ENV]], "api_key")}))
    try:
        if profile_name:
            where = f"profile {profile_name}"
            layers.append((where, where, _layer(serving_profile(profile_name).settings, where)))
        if client_name:
            where = f"client profile {client_name}"
            layers.append((f"client {client_name}", where, _layer(client_profile(client_name).settings, where)))
    except ProfileError as exc:
        raise ConfigError(str(exc))
    layers.append((f"config {config_path}", f"config file {config_path}", file_layer))
    layers.append((COMMAND_LINE, COMMAND_LINE, {name: (value, name) for name, value in given.items()}))
    values = DEFAULTS.as_dict()
    sources: dict[str, str] = {}
    wheres: dict[str, str] = {}
    keys: dict[str, str] = {}
    for source, where, settings in layers:
        for name, (value, key) in settings.items():
            values[name], sources[name], wheres[name], keys[name] = value, source, where, key
    return Resolved(check_settings(values, wheres, keys), sources, notes)


def _layer(settings: dict, where: str) -> dict[str, tuple[Any, str]]:
    """A file's or profile's settings: option name -> (typed value, the key as written)."""
    out = {}
    for key, value in settings.items():
        name, typed = setting(key, value, where)
        out[name] = (typed, str(key))
    return out


def source_of(resolved: Resolved, name: str) -> str:
    return resolved.sources.get(name, DEFAULT)


def printable_settings(resolved: Resolved) -> dict[str, Any]:
    """Every resolved setting under its option name; keys redacted; suitable for --config."""
    out = {}
    for name in sorted(resolved.values):
        if OPTIONS[name].cli_only:
            continue
        value = resolved.values[name]
        if name == "api_key" and value:
            value = [REDACTED for _ in value]
        out[name.replace("_", "-")] = value
    return out


def format_settings(resolved: Resolved, fmt: str) -> str:
    settings = printable_settings(resolved)
    if fmt == "json":
        sources = {k: source_of(resolved, k.replace("-", "_")) for k in settings}
        return json.dumps({"settings": settings, "sources": sources}, indent=2)
    lines = ["# vllm-mlx serve: resolved settings (usable as --config FILE; API keys are redacted)",
             "# precedence: command line > --config > --client > --profile > defaults"]
    for key, value in settings.items():
        comment = f"  # {source_of(resolved, key.replace('-', '_'))}"
        lines.append(f"# {key} = (unset){comment}" if value is None else f"{key} = {_toml(value)}{comment}")
    return "\n".join(lines)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)  # a JSON string is a valid TOML basic string


def fail(exc: Exception) -> int:
    print(f"error: {exc}", file=sys.stderr)
    return 2
