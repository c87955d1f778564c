"""The `vllm-mlx` command line."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import asdict, fields
from pathlib import Path

from . import __version__, limits
from .cli_lifecycle import add_lifecycle_arguments, lifecycle_fields
from .config import SamplingDefaults, ServerConfig
from .config_file import add_operator_flags
from .operator_cli import OPERATOR_COMMANDS, add_operator_commands, run_operator_command, serve_main
from .download import add_download_parser, run_download
from .engine.request import SamplingParams
from .media.audio import AudioLimits
from .media.decode import MediaLimits
from .media.fetch import FetchPolicy


def _add_serve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a model over the OpenAI-compatible HTTP API")
    p.add_argument("model", nargs="?", default=None,
                   help="a local model folder or a Hugging Face repo id (default: the built-in demo model)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    p.add_argument("--served-model-name", nargs="+", default=None,
                   help="name(s) the model is served under; the first is reported in responses")
    p.add_argument("--max-num-seqs", type=int, default=32,
                   help="most sequences decoded together in one batch (default: %(default)s)")
    p.add_argument("--max-num-batched-tokens", type=int, default=2048,
                   help="token budget of one engine step: decode rows plus prompt chunks (default: %(default)s)")
    p.add_argument("--max-tokens", type=int, default=512,
                   help="completion length for requests that give no max_tokens (default: %(default)s)")
    p.add_argument("--max-model-len", type=int, default=None,
                   help="context budget: prompt + completion tokens (default: from the model config)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16", "model"],
                   help="compute dtype for unquantized weights; auto = float32 on the CPU backend, "
                        "the model's own dtype on a GPU (default: %(default)s)")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow models whose config names a custom Python model file")
    p.add_argument("--api-key", action="append", default=None,
                   help="require this key (Bearer or x-api-key) on every route but /health and / (/health then shows "
                        "liveness only to requests without it); repeatable; "
                        "default: $VLLM_MLX_API_KEY")
    p.add_argument("--tool-call-parser", default="auto",
                   help="tool-call format: auto (from the chat template), none, or a name "
                        "(hermes, qwen3_coder, llama3_json, pythonic, llama4_pythonic, mistral, deepseek_v3, "
                        "kimi_k2, granite, nemotron_json, xlam, functionary_v3, glm45, lfm2, openai)")
    p.add_argument("--reasoning-parser", default="auto",
                   help="reasoning format: auto, none, or qwen3, deepseek_r1, mistral, openai_gptoss")
    p.add_argument("--enable-auto-tool-choice", action="store_true",
                   help="accepted for compatibility: tool calls are parsed whenever a request offers tools")
    p.add_argument("--strict-model-id", action="store_true",
                   help="answer 404 model_not_found unless the request names a served name or alias "
                        "(default: any name is served, as clients often send 'default')")
    p.add_argument("--deterministic", action="store_true",
                   help="identical requests give identical output under any concurrent load: every row is "
                        "computed at batch size 1 and prompts are prefilled alone in fixed-size chunks")
    c = p.add_argument_group("prefix cache")
    c.add_argument("--no-prefix-cache", dest="prefix_cache", action="store_false",
                   help="disable reuse of keys/values across requests that share a prompt prefix")
    c.add_argument("--enable-prefix-caching", dest="prefix_cache", action="store_true",
                   help="accepted for compatibility: the prefix cache is on by default")
    c.add_argument("--cache-memory-mb", type=int, default=None,
                   help="prefix-cache budget in MB (default: --cache-memory-fraction of the memory free at start)")
    c.add_argument("--cache-memory-fraction", type=float, default=0.25)
    c.add_argument("--prefix-block-size", type=int, default=64, help="tokens per cached block (default: %(default)s)")
    c.add_argument("--kv-cache-bits", type=int, choices=[4, 8], default=None,
                   help="store cached blocks quantized to 8 or 4 bits")
    c.add_argument("--kv-cache-dir", default=None,
                   help="persist cached blocks in this folder (safetensors), so a restarted server still hits")
    c.add_argument("--kv-cache-dir-mb", type=int, default=4096, help="size bound of --kv-cache-dir (default: %(default)s)")
    c.add_argument("--checkpoint-stride", type=int, default=4096,
                   help="models with recurrent or sliding-window layers: also checkpoint long prompts every this "
                        "many tokens, besides template boundaries and prompt/completion ends (0: off; "
                        "default: %(default)s)")
    c.add_argument("--verify-cache-restores", type=float, default=0.0, metavar="RATE",
                   help="re-check this fraction of prefix-cache restores against a fresh prefill; mismatches "
                        "are counted in /metrics and the request uses the fresh cache (default: 0)")
    c.add_argument("--warm-prompts", default=None,
                   help="a JSON or JSONL file of prompts (strings, or chat message lists) prefilled at startup")
    x = p.add_argument_group("models served beside the chat model (local folder or repo id; loaded on first use)")
    x.add_argument("--embedding-model", default=None, help="serve /v1/embeddings and /v1/rerank (mlx-embeddings)")
    x.add_argument("--stt-model", default=None,
                   help="serve /v1/audio/transcriptions and /v1/audio/translations (mlx-audio speech-to-text)")
    x.add_argument("--tts-model", default=None, help="serve /v1/audio/speech (mlx-audio text-to-speech)")
    x.add_argument("--preload-extra-models", action="store_true",
                   help="load the models above at startup instead of on their first request")
    x.add_argument("--max-embedding-batch-tokens", type=int, default=8192,
                   help="padded tokens of one embedding forward; concurrent requests share forwards up to "
                        "this size (default: %(default)s)")
    x.add_argument("--max-audio-upload-mb", type=float, default=25.0,
                   help="largest audio upload accepted, in MiB; larger ones get 413 (default: %(default)s)")
    x.add_argument("--max-audio-seconds", type=float, default=AudioLimits.max_seconds,
                   help="longest audio upload, read from its header before decoding; longer ones get 400 "
                        "(default: %(default)s)")
    x.add_argument("--min-audio-sample-rate", type=int, default=AudioLimits.min_sample_rate,
                   help="lowest sample rate of an audio upload, in Hz; lower ones get 400 (default: %(default)s)")
    m = p.add_argument_group("media URLs in requests (images, video)")
    m.add_argument("--media-max-mb", type=float, default=20.0, help="largest fetched or inlined media file (default: %(default)s)")
    m.add_argument("--media-timeout", type=float, default=10.0, help="seconds one media fetch may take, redirects included")
    m.add_argument("--media-allow-private", action="store_true",
                   help="allow media URLs that resolve to loopback, private, link-local or metadata addresses")
    m.add_argument("--media-allowed-hosts", nargs="+", default=(), metavar="HOST",
                   help="host names exempt from the private-address check")
    m.add_argument("--media-local-dir", default=None,
                   help="allow file:// and absolute-path media inside this directory (off by default)")
    v = p.add_argument_group("vision-language models (images and video, through mlx-vlm)")
    v.add_argument("--mllm", action="store_true",
                   help="load the model as a vision-language model (default: detected from its metadata)")
    v.add_argument("--text-only", action="store_true",
                   help="serve a vision-language folder (e.g. Qwen3.5) as a text model through mlx-lm: the vision "
                        "tower is not loaded and requests with images get a 400 (default: detected)")
    v.add_argument("--vision-cache-mb", type=int, default=512,
                   help="vision-embedding cache, keyed by image content hash (default: %(default)s)")
    v.add_argument("--max-image-pixels", type=int, default=40_000_000,
                   help="largest image or video frame (width x height) accepted, checked on its header before "
                        "decoding (default: %(default)s)")
    v.add_argument("--max-request-pixels", type=int, default=MediaLimits.max_request_pixels,
                   help="pixels of all images and sampled video frames of one request together, checked on their "
                        "headers before decoding (default: %(default)s)")
    v.add_argument("--max-media-per-request", type=int, default=16, help="images + videos in one request")
    v.add_argument("--video-fps", type=float, default=2.0, help="default video frame sampling rate")
    v.add_argument("--video-max-frames", type=int, default=32, help="frames sampled from one video at most")
    d = p.add_argument_group("sampling defaults (used only when a request omits the field)")
    d.add_argument("--default-temperature", type=float, default=1.0)
    d.add_argument("--default-top-p", type=float, default=1.0)
    d.add_argument("--default-top-k", type=int, default=0, help="0 disables top-k")
    d.add_argument("--default-min-p", type=float, default=0.0)
    d.add_argument("--default-presence-penalty", type=float, default=0.0)
    d.add_argument("--default-frequency-penalty", type=float, default=0.0)
    d.add_argument("--default-repetition-penalty", type=float, default=1.0)
    p.add_argument("--continuous-batching", action="store_true",
                   help="accepted for compatibility: batching is always on")
    p.add_argument("--shutdown-timeout", type=float, default=30.0,
                   help="on SIGTERM, seconds in-flight requests may keep running before they are ended "
                        "with a final event (default: %(default)s)")
    p.add_argument("--request-log", default=None, metavar="FILE",
                   help="append one JSON line per HTTP request to FILE: route, status, auth scheme, user agent, "
                        "and a summary of the body (stream, roles, tool names; no prompt text)")
    g = p.add_argument_group("distributed serving (run every rank under mlx.launch; see docs/distributed.md)")
    g.add_argument("--distributed", action="store_true",
                   help="shard the model over the ranks of an mlx.launch job: rank 0 serves HTTP and schedules, "
                        "every rank runs the same forward passes on its shard")
    g.add_argument("--distributed-timeout", type=float, default=60.0,
                   help="seconds one engine step (or a wait for rank 0) may take before a rank is considered "
                        "lost and the job exits (default: %(default)s)")
    g.add_argument("--distributed-parallelism", choices=["auto", "tensor", "pipeline"], default="auto",
                   help="how the model is split: tensor (every layer over all ranks; needs fast links), "
                        "pipeline (a run of layers per rank; fewer round trips per step, no prefix cache); "
                        "auto = tensor when mlx-lm can shard the architecture, else pipeline")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--sse-keepalive", type=float, default=15.0, metavar="SECONDS",
                   help="while a stream waits for its first token (queueing, a long prefill), send a keepalive "
                        "every SECONDS: an SSE comment on chat/completions/Responses, a ping event on "
                        "/v1/messages; 0 turns it off (default: %(default)s)")
    mcp = p.add_argument_group("MCP tools (docs/mcp.md)")
    mcp.add_argument("--mcp-config", default=None,
                   help="a JSON file of MCP servers ({\"mcpServers\": ...}, plus \"policy\"): serves "
                        "/v1/mcp/* and lets chat requests use the allowed tools")
    mcp.add_argument("--mcp-auto", action="store_true",
                   help="run the server-side MCP tool loop for every chat request that does not send \"mcp\"")
    add_operator_flags(p)
    add_lifecycle_arguments(p)
    limits.add_arguments(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vllm-mlx", description="LLM serving on MLX")
    parser.add_argument("--version", action="version", version=f"vllm-mlx {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_serve_parser(sub)
    add_operator_commands(sub)
    add_download_parser(sub)
    sub.add_parser("bench", add_help=False, help="benchmarks: `vllm-mlx bench MODEL`, "
                   "`bench serve --url URL`, `bench divergence`, `bench agent` (see `vllm-mlx bench --help`)")
    return parser


def serve_config(args: argparse.Namespace) -> ServerConfig:
    for name in ("max_num_seqs", "max_num_batched_tokens", "max_tokens", "max_embedding_batch_tokens"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be at least 1")
    if args.max_audio_upload_mb <= 0 or args.max_audio_seconds <= 0 or args.min_audio_sample_rate < 1:
        raise SystemExit("--max-audio-upload-mb, --max-audio-seconds and --min-audio-sample-rate must be positive")
    if args.mllm and args.text_only:
        raise SystemExit("--mllm and --text-only contradict each other; pass one of them")
    if args.checkpoint_stride < 0:
        raise SystemExit("--checkpoint-stride must be 0 (off) or positive")
    if not 0.0 <= args.verify_cache_restores <= 1.0:
        raise SystemExit("--verify-cache-restores must be a rate between 0 and 1")
    return ServerConfig(
        model=args.model,
        served_model_names=tuple(args.served_model_name or ()),
        host=args.host,
        port=args.port,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        max_tokens=args.max_tokens,
        max_model_len=args.max_model_len,
        dtype=args.dtype,
        trust_remote_code=args.trust_remote_code,
        api_keys=tuple(args.api_key or ([os.environ["VLLM_MLX_API_KEY"]] if os.environ.get("VLLM_MLX_API_KEY") else [])),
        strict_model_id=args.strict_model_id,
        tool_call_parser=args.tool_call_parser,
        reasoning_parser=args.reasoning_parser,
        mcp_config=_checked_mcp_config(args),
        mcp_auto=args.mcp_auto,
        sse_keepalive=max(args.sse_keepalive, 0.0),
        deterministic=args.deterministic,
        prefix_cache=args.prefix_cache,
        cache_memory_mb=args.cache_memory_mb,
        cache_memory_fraction=args.cache_memory_fraction,
        prefix_block_size=args.prefix_block_size,
        kv_cache_bits=args.kv_cache_bits,
        kv_cache_dir=args.kv_cache_dir,
        kv_cache_dir_mb=args.kv_cache_dir_mb,
        checkpoint_stride=args.checkpoint_stride,
        verify_cache_restores=args.verify_cache_restores,
        warm_prompts=args.warm_prompts,
        embedding_model=args.embedding_model,
        stt_model=args.stt_model,
        tts_model=args.tts_model,
        preload_extra_models=args.preload_extra_models,
        max_embedding_batch_tokens=args.max_embedding_batch_tokens,
        max_audio_upload_bytes=int(args.max_audio_upload_mb * 2**20),
        audio_limits=AudioLimits(max_seconds=args.max_audio_seconds, min_sample_rate=args.min_audio_sample_rate),
        media_fetch=_media_fetch_policy(args),
        media_limits=MediaLimits(max_image_pixels=args.max_image_pixels, max_images=args.max_media_per_request,
                                 video_fps=args.video_fps, video_max_frames=args.video_max_frames,
                                 max_request_pixels=args.max_request_pixels),
        mllm=args.mllm,
        text_only=args.text_only,
        vision_cache_mb=args.vision_cache_mb,
        sampling_defaults=_sampling_defaults(args),
        log_level=args.log_level,
        shutdown_timeout=args.shutdown_timeout,
        distributed=args.distributed,
        distributed_timeout=args.distributed_timeout,
        distributed_parallelism=args.distributed_parallelism,
        request_log=args.request_log,
        **limits.from_args(args),
        **lifecycle_fields(args),
    )


def _media_fetch_policy(args: argparse.Namespace) -> FetchPolicy:
    if args.media_max_mb <= 0 or args.media_timeout <= 0:
        raise SystemExit("--media-max-mb and --media-timeout must be positive")
    return FetchPolicy(
        max_bytes=int(args.media_max_mb * 2**20),
        timeout_s=args.media_timeout,
        allow_private=args.media_allow_private,
        allowed_hosts=frozenset(h.lower() for h in args.media_allowed_hosts),
        allowed_local_dir=Path(args.media_local_dir) if args.media_local_dir else None,
    )


def _sampling_defaults(args: argparse.Namespace) -> SamplingDefaults:
    """--default-<field> flags; checked with the same rules as request values."""
    defaults = SamplingDefaults(**{f.name: getattr(args, f"default_{f.name}") for f in fields(SamplingDefaults)})
    try:
        SamplingParams(**asdict(defaults)).validate()
    except ValueError as exc:
        raise SystemExit(f"invalid sampling default: {exc}")
    return defaults


def _checked_mcp_config(args: argparse.Namespace) -> str | None:
    """--mcp-config, read and checked now so a bad file fails before any model is loaded."""
    if args.mcp_auto and not args.mcp_config:
        raise SystemExit("--mcp-auto needs --mcp-config")
    if args.mcp_config:
        from .mcp.config import MCPConfigError, load_mcp_config

        try:
            import jsonschema  # noqa: F401
            import mcp  # noqa: F401
        except ImportError:
            raise SystemExit("error: --mcp-config needs the MCP SDK: pip install 'vllm-mlx[mcp]'")
        try:
            load_mcp_config(args.mcp_config)
        except MCPConfigError as exc:
            raise SystemExit(f"error: {exc}")
    return args.mcp_config


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
        from .serve_distributed import DistributedSetupError, join_group, run_follower

        try:
            group = join_group(config)
        except DistributedSetupError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if group.rank() != 0:
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
    args = build_parser().parse_args(argv)
    if args.command == "serve":  # flags > --config > --client > --profile > defaults
        return serve_main(build_parser, argv, serve_config, run_server)
    if args.command in OPERATOR_COMMANDS:
        return run_operator_command(args)
    if args.command == "download":
        return run_download(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
