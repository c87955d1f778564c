"""What a serve option is: its declaration, the checks it may carry, and the error a bad value raises.

A check is a function of the (typed) value that returns None when the value is fine, or the phrase
that follows the option's name in the error (``"must be at least 1"``); a check that needs a whole
sentence raises ValueError with it instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

Check = Callable[[Any], "str | None"]


class OptionError(ValueError):
    """A bad serve setting; the message is one line naming the option (and the file or profile)."""


@dataclass(frozen=True)
class Flag:
    """A further command-line flag of a true/false option, setting it to ``value``."""

    flag: str
    value: bool
    help: str | None = None


@dataclass(frozen=True)
class Option:
    name: str  # config-file key and argparse destination (the ServerConfig field where one matches)
    default: Any
    help: str | None = None
    type: type = str  # str, int, float, or bool for a switch
    group: str = "server"  # a key of table.GROUPS
    flags: tuple[str, ...] | None = None  # None: --name-with-dashes; (): a positional argument
    switch_value: bool = True  # a switch's flags set this value (False for --no-prefix-cache)
    more_flags: tuple[Flag, ...] = ()  # further switch flags (compatibility spellings)
    nargs: str | None = None  # "+" (several values) or "?" (an optional positional)
    append: bool = False  # a repeatable flag; its values are collected in a list
    choices: tuple | None = None
    check: Check | None = None
    convert: Callable[[Any], Any] | None = None  # a checked value -> the value the server uses
    metavar: str | None = None
    cli_only: bool = False  # not settable in a config file or profile (--config, --print-config)

    @property
    def many(self) -> bool:
        return self.append or self.nargs == "+"

    @property
    def switch(self) -> bool:
        return self.type is bool

    @property
    def option_strings(self) -> tuple[str, ...]:
        return ("--" + self.name.replace("_", "-"),) if self.flags is None else self.flags

    @property
    def label(self) -> str:
        """How errors name the option given on the command line."""
        return self.option_strings[0] if self.option_strings else self.name.upper()


@dataclass(frozen=True)
class Rule:
    """A check across options: ``broken(values)`` gives the error message, or None."""

    names: tuple[str, ...]  # the options it reads (errors say where each one's value came from)
    broken: Callable[[Mapping[str, Any]], "str | None"]


class Defaults:
    """Every option's default by attribute (``DEFAULTS.max_num_seqs``); a typo is an AttributeError."""

    def __init__(self, options: Mapping[str, Option]):
        object.__setattr__(self, "_values", {name: o.default for name, o in options.items()})

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"no serve option named {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("option defaults are read-only")

    def as_dict(self) -> dict[str, Any]:
        return dict(self._values)


# -- checks ------------------------------------------------------------------------------------------

def at_least(n: int, phrase: str | None = None) -> Check:
    return lambda v: None if v >= n else (phrase or f"must be at least {n}")


def positive(v: float) -> str | None:
    return None if v > 0 else "must be positive"


def not_negative(v: float) -> str | None:
    return None if v >= 0 else "must not be negative"


def within(lo: float, hi: float, phrase: str | None = None) -> Check:
    return lambda v: None if lo <= v <= hi else (phrase or f"must be within {lo}..{hi}")


def fraction(v: float) -> str | None:
    return None if 0 < v <= 1 else "must be in (0, 1]"
