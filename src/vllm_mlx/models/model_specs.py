"""The entries of multi-model serving (``--models`` or a config file's ``models`` list), parsed and checked.

Accepted forms, freely mixed:

* ``"NAME=MODEL"``, or ``"NAME,ALIAS,...=MODEL"`` for more names of one model;
* ``{"name": NAME, "model": MODEL, "aliases": [ALIAS, ...]}`` (``aliases`` optional);
* ``{NAME: MODEL, ...}`` mappings.

MODEL is a local folder or a repo id. No heavy imports here: the CLI checks entries before starting.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable


class ModelSpecError(ValueError):
    """A models entry that cannot be understood."""


@dataclass(frozen=True)
class ModelSpec:
    name: str  # reported in responses
    source: str  # a local folder or a repo id
    aliases: tuple[str, ...] = ()  # further names requests may use

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


def _clean(value: Any, entry: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ModelSpecError(f"a models entry must be NAME=MODEL (a folder or repo id), not {entry!r}")
    return value.strip()


def _specs_of(entry: Any) -> list[ModelSpec]:
    if isinstance(entry, str):
        names, sep, source = entry.partition("=")
        if not sep:
            raise ModelSpecError(f"a models entry must be NAME=MODEL (a folder or repo id), not {entry!r}")
        first, *aliases = [_clean(n, entry) for n in names.split(",")]
        return [ModelSpec(first, _clean(source, entry), tuple(aliases))]
    if isinstance(entry, dict) and "name" in entry:
        aliases = entry.get("aliases") or ()
        if isinstance(aliases, str) or not all(isinstance(a, str) for a in aliases):
            raise ModelSpecError(f"aliases must be a list of names, not {aliases!r}")
        source = entry.get("model", entry.get("path"))
        return [ModelSpec(_clean(entry["name"], entry), _clean(source, entry),
                          tuple(_clean(a, entry) for a in aliases))]
    if isinstance(entry, dict):
        return [ModelSpec(_clean(n, entry), _clean(s, entry)) for n, s in entry.items()]
    raise ModelSpecError(f"a models entry must be NAME=MODEL (a folder or repo id), not {entry!r}")


def parse_model_specs(entries: Iterable[Any]) -> list[ModelSpec]:
    if isinstance(entries, (str, dict)):
        entries = [entries]
    specs = [spec for entry in entries for spec in _specs_of(entry)]
    names = [n for spec in specs for n in spec.names]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ModelSpecError(f"model names must be unique; given more than once: {', '.join(duplicates)}")
    return specs
