"""`vllm-mlx serve` settings from layers: defaults < --profile < --client < --config FILE < flags.

Every serve option can be set in a TOML or YAML file; keys are the option names with ``-`` or ``_``
(``max-num-seqs``, ``max_num_seqs``, ``no-prefix-cache``) or the option's destination
(``prefix_cache = false``). An unknown key, a wrong type or a value outside an option's choices is an
error naming the file and key.
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from .config import ServerConfig
from .profiles import ProfileError, client_profile, serving_profile

META = frozenset({"help", "config", "print_config", "print_format"})  # command-line only
# ServerConfig fields this module fills from the options it adds (add_operator_flags)
OPERATOR_FIELDS = ("profile", "client", "rate_limit", "cors_origins", "cors_methods", "cors_headers",
                   "cors_allow_credentials")
REDACTED = "<redacted>"


class ConfigError(ValueError):
    pass


def add_operator_flags(p: argparse.ArgumentParser) -> None:
    """The options of `serve` this module and the operator features own."""
    g = p.add_argument_group("profiles and config file (precedence: flags > --config > --client > --profile)")
    g.add_argument("--config", default=None, metavar="FILE",
                   help="TOML or YAML file of serve settings; keys are option names (see docs/operator-guide.md)")
    g.add_argument("--profile", default=None, metavar="NAME",
                   help="serving profile (see `vllm-mlx profiles`): text-default, text-deterministic, text-tools, "
                        "text-json, mllm-default, mllm-correctness")
    g.add_argument("--client", default=None, metavar="NAME",
                   help="client profile: server settings the client needs, and its client-side settings printed "
                        "at startup (claude-code, codex, opencode, open-webui, continue, qwen-code, ...)")
    g.add_argument("--print-config", action="store_true",
                   help="print the resolved settings and where each came from, then exit without loading the model")
    g.add_argument("--print-format", choices=["toml", "json"], default="toml", help="format of --print-config")
    s = p.add_argument_group("access")
    s.add_argument("--rate-limit", type=int, default=None, metavar="N",
                   help="requests per minute per API key (per client IP without --api-key); over it: 429 + "
                        "Retry-After (default: no limit)")
    s.add_argument("--cors-origins", nargs="+", default=[], metavar="ORIGIN",
                   help="origins browsers may call the API from ('*' for any); default: none (same origin only)")
    s.add_argument("--cors-methods", nargs="+", default=list(ServerConfig.cors_methods), metavar="METHOD")
    s.add_argument("--cors-headers", nargs="+", default=list(ServerConfig.cors_headers), metavar="HEADER")
    s.add_argument("--cors-allow-credentials", action="store_true")


def subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[name]
    raise KeyError(name)


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
class SettingSpace:
    """What keys may be set: serve options, by destination or option name."""

    actions: dict[str, argparse.Action]  # dest -> action
    aliases: dict[str, argparse.Action]  # normalized option name -> action

    @classmethod
    def of(cls, serve: argparse.ArgumentParser) -> "SettingSpace":
        actions, aliases = {}, {}
        for a in serve._actions:
            if a.dest in META:
                continue
            actions.setdefault(a.dest, a)
            for opt in a.option_strings:
                aliases[opt.lstrip("-").replace("-", "_")] = a
        return cls(actions, aliases)

    def setting(self, key: str, value: Any, where: str) -> tuple[str, Any]:
        """(destination, checked value) for one key of a profile or config file."""
        norm = str(key).replace("-", "_")
        if norm in META:
            raise ConfigError(f"{where}: '{key}' can only be given on the command line")
        if norm in self.actions:
            return norm, _coerce(self.actions[norm], value, where, key, by_dest=True)
        if norm in self.aliases:
            action = self.aliases[norm]
            return action.dest, _coerce(action, value, where, key, by_dest=norm == action.dest)
        raise ConfigError(f"{where}: unknown setting '{key}' (settings are `vllm-mlx serve` option names; "
                          f"see `vllm-mlx serve --help`)")


def _coerce(action: argparse.Action, value: Any, where: str, key: str, by_dest: bool) -> Any:
    def bad(why: str) -> ConfigError:
        return ConfigError(f"{where}: '{key}' {why} (got {value!r})")

    if action.nargs == 0:  # store_true / store_false / store_const
        if not isinstance(value, bool):
            raise bad("must be true or false")
        if by_dest:
            return value
        return action.const if value else (not action.const if isinstance(action.const, bool) else action.default)
    many = isinstance(action, argparse._AppendAction) or action.nargs in ("+", "*")
    if many:
        items = value if isinstance(value, list) else [value]
        return [_scalar(action, v, bad) for v in items]
    if isinstance(value, list):
        raise bad("takes one value, not a list")
    return _scalar(action, value, bad)


def _scalar(action: argparse.Action, value: Any, bad: Callable[[str], ConfigError]) -> Any:
    if value is None:
        if action.default is None:
            return None
        raise bad("cannot be empty")
    kind = action.type
    if isinstance(value, bool):  # YAML reads yes/no/on/off as booleans too
        raise bad("must be a number or a string, not true/false (quote it in YAML)")
    if kind is int and isinstance(value, float):
        if not value.is_integer():
            raise bad("must be a whole number")
        value = int(value)
    try:
        value = kind(value) if kind is not None else (value if isinstance(value, str) else str(value))
    except (TypeError, ValueError):
        raise bad(f"must be of type {getattr(kind, '__name__', kind)}")
    if action.choices is not None and value not in action.choices:
        raise bad(f"must be one of {', '.join(map(str, action.choices))}")
    return value


@dataclass
class Resolved:
    namespace: argparse.Namespace  # every serve option, resolved
    sources: dict[str, str] = field(default_factory=dict)  # setting -> where its value came from


def explicit_dests(build_parser: Callable[[], argparse.ArgumentParser], argv: list[str]) -> dict[str, Any]:
    """The serve options the command line really gave (parsed again with every default suppressed)."""
    parser = build_parser()
    for action in subparser(parser, "serve")._actions:
        if not isinstance(action, argparse._HelpAction):
            action.default = argparse.SUPPRESS
    given = vars(parser.parse_args(argv))
    given.pop("command", None)
    return given


def resolve_serve_settings(build_parser: Callable[[], argparse.ArgumentParser], argv: list[str]) -> Resolved:
    parser = build_parser()
    ns = parser.parse_args(argv)
    space = SettingSpace.of(subparser(parser, "serve"))
    given = explicit_dests(build_parser, argv)
    file_settings: dict[str, Any] = {}
    if ns.config:
        for key, value in load_config_file(ns.config).items():
            dest, checked = space.setting(key, value, f"config file {ns.config}")
            file_settings[dest] = checked
    profile_name = given.get("profile", file_settings.get("profile"))
    client_name = given.get("client", file_settings.get("client"))
    layers: list[tuple[str, dict]] = []
    try:
        if profile_name:
            layers.append((f"profile {profile_name}", _checked(space, serving_profile(profile_name).settings,
                                                               f"profile {profile_name}")))
        if client_name:
            layers.append((f"client {client_name}", _checked(space, client_profile(client_name).settings,
                                                             f"client profile {client_name}")))
    except ProfileError as exc:
        raise ConfigError(str(exc))
    layers.append((f"config {ns.config}", file_settings))
    layers.append(("command line", {k: v for k, v in given.items() if k not in META}))
    values = {dest: getattr(ns, dest) for dest in space.actions}
    sources: dict[str, str] = {}
    for source, settings in layers:
        for dest, value in settings.items():
            values[dest] = value
            sources[dest] = source
    merged = argparse.Namespace(**{**vars(ns), **values})
    return Resolved(merged, sources)


def _checked(space: SettingSpace, settings: dict, where: str) -> dict:
    return dict(space.setting(k, v, where) for k, v in settings.items())


def apply_operator_settings(config: ServerConfig, resolved: Resolved) -> ServerConfig:
    """The ServerConfig fields the operator options fill (serve_config fills the rest)."""
    ns = resolved.namespace
    if ns.rate_limit is not None and ns.rate_limit < 1:
        raise ConfigError("--rate-limit must be at least 1 request per minute")
    if "*" in ns.cors_origins and ns.cors_allow_credentials:
        raise ConfigError("--cors-allow-credentials cannot be combined with --cors-origins '*'")
    values = {name: getattr(ns, name) for name in OPERATOR_FIELDS}
    for name in ("cors_origins", "cors_methods", "cors_headers"):
        values[name] = tuple(values[name])
    return replace(config, **values)


def printable_settings(resolved: Resolved) -> dict[str, Any]:
    """Every resolved setting under its option name; keys redacted; suitable for --config."""
    out = {}
    for dest, value in sorted(vars(resolved.namespace).items()):
        if dest in META or dest == "command":
            continue
        if dest == "api_key" and value:
            value = [REDACTED for _ in value]
        out[dest.replace("_", "-")] = value
    return out


def format_settings(resolved: Resolved, fmt: str) -> str:
    settings = printable_settings(resolved)
    if fmt == "json":
        sources = {k.replace("_", "-"): v for k, v in sorted(resolved.sources.items())}
        return json.dumps({"settings": settings, "sources": sources}, indent=2)
    lines = ["# vllm-mlx serve: resolved settings (usable as --config FILE; API keys are redacted)",
             "# precedence: command line > --config > --client > --profile > defaults"]
    for key, value in settings.items():
        source = resolved.sources.get(key.replace("-", "_"))
        comment = f"  # {source}" if source else ""
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
