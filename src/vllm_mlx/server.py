"""``python -m vllm_mlx.server --model M [serve flags]``: the entry of the earlier vllm-mlx 0.2.x, run as
``vllm-mlx serve M [serve flags]`` (its other flags are mapped or refused like those of `serve`)."""

from __future__ import annotations

import sys


def server_args(argv: list[str]) -> list[str]:
    """The `vllm-mlx` arguments of a legacy ``--model M ...`` command line."""
    rest = list(argv)
    for i, arg in enumerate(rest):
        if arg == "--model" and i + 1 < len(rest):
            return ["serve", rest[i + 1], *rest[:i], *rest[i + 2:]]
        if arg.startswith("--model="):
            return ["serve", arg.partition("=")[2], *rest[:i], *rest[i + 1:]]
    return ["serve", *rest]


def main(argv: list[str] | None = None) -> int:
    from .cli import main as cli_main

    return cli_main(server_args(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
