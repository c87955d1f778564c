"""The serve options: one table (:mod:`.table`), and what is built from it.

- :data:`OPTIONS` by name and :data:`DEFAULTS` (``DEFAULTS.max_num_seqs``), read by ServerConfig,
  EngineConfig and the limit classes instead of restating numbers;
- :func:`add_serve_arguments`: the argparse flags of `vllm-mlx serve`;
- :func:`setting`: a config-file or profile key and value, typed like its flag;
- :func:`check_settings`: every check of every option, then the rules across options, on the
  resolved values. The only place serve settings are validated; errors are :class:`OptionError`.
"""

from __future__ import annotations

import argparse
from types import MappingProxyType
from typing import Any, Mapping

from .spec import Defaults, Flag, Option, OptionError, Rule
from .rules import RULES
from .table import BATCH_DIVERGENCE_ACTIONS, ENGINE_RESTARTS, GROUPS, MAX_LORAS, SPECULATIVE_TOKENS
from .table import OPTIONS as _DECLARED

__all__ = ["BATCH_DIVERGENCE_ACTIONS", "DEFAULTS", "ENGINE_RESTARTS", "Flag", "GROUPS", "OPTIONS", "Option",
           "OptionError", "Rule", "MAX_LORAS", "RULES", "SPECULATIVE_TOKENS", "SEED_EPILOG", "OneLineErrors",
           "add_serve_arguments", "check_settings", "serve_parser", "setting"]

OPTIONS: Mapping[str, Option] = MappingProxyType({o.name: o for o in _DECLARED})
DEFAULTS = Defaults(OPTIONS)
COMMAND_LINE = "command line"
SEED_EPILOG = ("flags of the earlier vllm-mlx 0.2.x (--localhost, --cache-memory-percent, --runtime-mode ...) are "
               "mapped to these or refused with what to use instead: see docs/migrating.md")
DEFAULT = "default"


def _key(text: str) -> str:
    return str(text).lstrip("-").replace("-", "_")


def _keys() -> dict[str, tuple[Option, bool | None]]:
    """Config keys: each option's name, and each of its flags (a switch flag means its value)."""
    keys: dict[str, tuple[Option, bool | None]] = {}
    for o in OPTIONS.values():
        for flag in o.option_strings:
            keys[_key(flag)] = (o, o.switch_value if o.switch else None)
        for extra in o.more_flags:
            keys[_key(extra.flag)] = (o, extra.value)
        keys[o.name] = (o, None)
    return keys


_KEYS = _keys()


# -- argparse --------------------------------------------------------------------------------------

class OneLineErrors(argparse.ArgumentParser):
    """An argument error is one line (the usage of `serve` is longer than a screen): `--help` has it."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def add_serve_arguments(parser: argparse.ArgumentParser, suppress_defaults: bool = False) -> None:
    """Every serve option as an argparse argument (destination = option name), in its group."""
    groups = {key: parser if title is None else parser.add_argument_group(title) for key, title in GROUPS.items()}

    def default(o: Option) -> Any:
        return argparse.SUPPRESS if suppress_defaults else o.default

    for o in OPTIONS.values():
        g = groups[o.group]
        if not o.option_strings:
            g.add_argument(o.name, nargs=o.nargs, default=default(o), help=o.help)
        elif o.switch:
            spellings = [(o.option_strings, o.switch_value, o.help),
                         *(((f.flag,), f.value, f.help) for f in o.more_flags)]
            for flags, value, text in spellings:
                g.add_argument(*flags, dest=o.name, action="store_true" if value else "store_false",
                               default=default(o), help=text)
        else:
            kwargs: dict[str, Any] = dict(dest=o.name, default=default(o), help=o.help)
            if o.type in (int, float):
                kwargs["type"] = o.type
            if o.choices is not None:
                kwargs["choices"] = o.choices
            if o.metavar:
                kwargs["metavar"] = o.metavar
            if o.append:
                kwargs["action"] = "append"
            elif o.nargs:
                kwargs["nargs"] = o.nargs
            g.add_argument(*o.option_strings, **kwargs)


def serve_parser(suppress_defaults: bool = False) -> argparse.ArgumentParser:
    """The arguments after `vllm-mlx serve`; with ``suppress_defaults`` only those given are set."""
    parser = OneLineErrors(prog="vllm-mlx serve", description="serve a model over the OpenAI-compatible HTTP API",
                           epilog=SEED_EPILOG)
    add_serve_arguments(parser, suppress_defaults)
    return parser


# -- config files and profiles ---------------------------------------------------------------------

def setting(key: Any, value: Any, where: str) -> tuple[str, Any]:
    """(option name, typed value) for one key of a config file or profile; OptionError naming
    ``where`` and the key otherwise. The option's checks run later, in :func:`check_settings`."""
    entry = _KEYS.get(_key(key))
    if entry is None:
        raise OptionError(f"{where}: unknown setting '{key}' (settings are `vllm-mlx serve` option names; "
                          f"see `vllm-mlx serve --help`)")
    o, flag_value = entry

    def bad(why: str) -> OptionError:
        return OptionError(f"{where}: '{key}' {why} (got {value!r})")

    if o.cli_only:
        raise OptionError(f"{where}: '{key}' can only be given on the command line")
    if o.switch:
        if not isinstance(value, bool):
            raise bad("must be true or false")
        return o.name, value if flag_value is None else (flag_value if value else not flag_value)
    if o.many and value is not None:
        return o.name, [_scalar(o, v, bad) for v in (value if isinstance(value, list) else [value])]
    if isinstance(value, list):
        raise bad("takes one value, not a list")
    return o.name, _scalar(o, value, bad)


def _scalar(o: Option, value: Any, bad) -> Any:
    if value is None:
        if o.default is None:
            return None
        raise bad("cannot be empty")
    if o.type is object:
        return value
    if isinstance(value, bool):  # YAML reads yes/no/on/off as booleans too
        raise bad("must be a number or a string, not true/false (quote it in YAML)")
    if o.type is int and isinstance(value, float):
        if not value.is_integer():
            raise bad("must be a whole number")
        value = int(value)
    if o.type is str and isinstance(value, (dict, list)):
        raise bad("must be a string")
    try:
        value = o.type(value)
    except (TypeError, ValueError):
        raise bad(f"must be of type {o.type.__name__}")
    if o.choices is not None and value not in o.choices:
        raise bad(f"must be one of {', '.join(map(str, o.choices))}")
    return value


# -- validation --------------------------------------------------------------------------------------

def _label(o: Option, source: str, key: str | None) -> str:
    if source in (COMMAND_LINE, DEFAULT) or source.startswith("$"):
        return o.label
    return f"{source}: '{key or o.name}'"


def check_settings(values: Mapping[str, Any], sources: Mapping[str, str] | None = None,
                   keys: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The values with each option's check passed and its conversion applied (parser aliases,
    0 = no limit), after which the rules across options hold. ``sources``: where each value came
    from (errors name the flag, or the file or profile and its ``keys`` entry)."""
    sources, keys = sources or {}, keys or {}
    out = dict(values)
    for name, o in OPTIONS.items():
        value = out.get(name)
        if value is None or (o.check is None and o.convert is None):
            continue
        label = _label(o, sources.get(name, DEFAULT), keys.get(name))
        try:
            problem = o.check(value) if o.check else None
            if problem is None and o.convert:
                out[name] = o.convert(value)
        except ValueError as exc:
            raise OptionError(f"{label}: {exc}") from None
        if problem:
            raise OptionError(f"{label} {problem} (got {value!r})")
    for rule in RULES:
        message = rule.broken(out)
        if message:
            where = [f"{OPTIONS[n].label} from {sources[n]}" for n in rule.names
                     if out.get(n) and sources.get(n, DEFAULT) not in (COMMAND_LINE, DEFAULT)]
            raise OptionError(message + (f" ({'; '.join(where)})" if where else ""))
    return out
