"""The optional extras (vision, embeddings, audio, mcp, bench) and how to install one, in the words
that fit how this copy of vllm-mlx was installed.

A light install serves text only; a feature that needs an extra says how to add it:

* from a clone (``scripts/dev.sh``'s venv, or PYTHONPATH=src): ``scripts/dev.sh install full``
  installs every extra, hash-pinned from requirements.lock (the versions the tests run);
* an installed wheel (pip, pipx, uv tool): the extra's own packages, pinned as the wheel names
  them, installed with this interpreter's pip (``pipx inject`` / ``uv tool install --with`` for
  those tools' environments).
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

EXTRAS = ("vision", "embeddings", "audio", "mcp", "bench")
DISTRIBUTION = "vllm-mlx"


def source_checkout() -> Path | None:
    """The clone this package runs from (it has scripts/dev.sh), or None for an installed wheel."""
    root = Path(__file__).resolve().parents[2]
    if (root / "scripts" / "dev.sh").is_file() and (root / "pyproject.toml").is_file():
        return root
    return None


def extra_requirements(extra: str) -> list[str]:
    """The requirement strings of ``extra`` as the installed distribution declares them (e.g.
    ``mlx-embeddings==0.1.0``); empty when vllm-mlx is not installed as a distribution."""
    from importlib.metadata import PackageNotFoundError, requires

    try:
        declared = requires(DISTRIBUTION) or []
    except PackageNotFoundError:
        return []
    out = []
    for req in declared:
        spec, _, marker = req.partition(";")
        if re.search(r"""extra\s*==\s*["']%s["']""" % re.escape(extra), marker):
            out.append(spec.strip().replace(" ", ""))
    return out


def install_hint(extra: str) -> str:
    """One line saying how to install ``extra`` for this installation."""
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}")
    root = source_checkout()
    if root is not None:
        return f"scripts/dev.sh install full (in {root}: every extra, hash-pinned from requirements.lock)"
    packages = extra_requirements(extra)
    if not packages:
        return f"install the '{extra}' extra of vllm-mlx (pip install '<path to a vllm-mlx clone>[{extra}]')"
    quoted = " ".join(shlex.quote(p) for p in packages)
    return (f"{shlex.quote(sys.executable)} -m pip install {quoted} (the '{extra}' extra; "
            f"pipx: pipx inject vllm-mlx {quoted}; uv tool: uv tool install --with {quoted} ...)")
