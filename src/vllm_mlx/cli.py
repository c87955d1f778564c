"""The `vllm-mlx` command line."""

from __future__ import annotations

import argparse
import logging
import sys

from . import __version__
from .config import ServerConfig, server_config
from .download import add_download_parser, run_download
from .operator_cli import OPERATOR_COMMANDS, add_operator_commands, run_operator_command, serve_main
from .options import SEED_EPILOG, OneLineErrors, add_serve_arguments


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrors(prog="vllm-mlx", description="LLM serving on MLX")
    parser.add_argument("--version", action="version", version=f"vllm-mlx {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve a model over the OpenAI-compatible HTTP API",
                           description="serve a model over the OpenAI-compatible HTTP API", epilog=SEED_EPILOG)
    add_serve_arguments(serve)
    add_operator_commands(sub)
    add_download_parser(sub)
    sub.add_parser("bench", add_help=False, help="benchmarks: `vllm-mlx bench MODEL`, "
                   "`bench rows MODEL`, `bench served MODEL`, `bench serve --url URL`, `bench divergence`, "
                   "`bench agent` (see `vllm-mlx bench --help`)")
    return parser


def serve_config(values) -> ServerConfig:
    """The ServerConfig of resolved serve settings (config_file.resolve_serve_settings: checked there)."""
    return server_config(values if isinstance(values, dict) else vars(values))


def run_server(config: ServerConfig) -> int:
    import uvicorn

    from .api.app import create_app
    from .api.connection_guard import guarded_protocol
    from .api.shutdown import DrainingServer
    from .models.loader import ModelNotFoundError
    from .models.model_specs import ModelSpecError

    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    group = None
    if config.distributed:
        from .serve_distributed import run_follower
        from .serving.distributed_setup import (DistributedSetupError, check_distributed, join_group,
                                                launched_rank, tag_log_lines)

        try:
            if config.engine_process and launched_rank() == 0:
                check_distributed(config)  # rank 0's engine process joins the group, not this process
                tag_log_lines("rank0-api")
            else:
                group = join_group(config)
        except DistributedSetupError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if group is not None and group.rank() != 0:
            return run_follower(config, group)
    try:
        app = create_app(config, group=group)
    except (ModelNotFoundError, ModelSpecError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    limits = config.limits
    uvicorn_config = uvicorn.Config(app, host=config.host, port=config.port, log_level=config.log_level,
                                    timeout_graceful_shutdown=config.shutdown_timeout + 5,
                                    http=guarded_protocol(limits.header_timeout_s, limits.body_timeout_s,
                                                          limits.write_timeout_s))
    server = DrainingServer(uvicorn_config, app, config.shutdown_timeout)
    server.run()
    return 0 if server.started else 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # its own parsers: `bench MODEL` or `bench serve|divergence|agent ...`
        from .bench.cli import main as bench_main

        return bench_main(argv[1:])
    if argv[:1] == ["serve"] and not {"-h", "--help"} & set(argv):  # flags > --config > --client > --profile
        return serve_main(argv[1:], run_server)  # (parsed there, after the flags of 0.2.x are mapped)
    if argv[:1] in (["bench-detok"], ["bench-kv-cache"]):
        from .seed_commands import seed_bench_command

        return seed_bench_command(argv[0])
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return serve_main(argv[argv.index("serve") + 1:], run_server)
    if args.command in OPERATOR_COMMANDS:
        return run_operator_command(args)
    if args.command == "download":
        return run_download(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
