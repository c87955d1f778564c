"""Every `vllm-mlx serve` option, declared once: flag, type, default, help, group and checks.

argparse, config files, profiles, --print-config and ServerConfig / EngineConfig / Limits /
MediaLimits / AudioLimits / FetchPolicy / SamplingDefaults all take their defaults and checks from
here (the rules across options are in :mod:`.rules`); those classes never restate a default. A
``%(default)s`` in a help text is filled by argparse.
"""

from __future__ import annotations

from ..engine.request import SamplingParams
from .spec import Flag, Option, at_least, fraction, not_negative, positive, within

# argparse groups, in --help order; None = the parser's own options section.
GROUPS: dict[str, str | None] = {
    "server": None,
    "prefix cache": "prefix cache",
    "extra models": "models served beside the chat model (local folder or repo id; loaded on first use)",
    "media": "media URLs in requests (images, video)",
    "vision": "vision-language models (images and video, through mlx-vlm)",
    "sampling": "sampling defaults (used only when a request omits the field)",
    "distributed": "distributed serving (run every rank under mlx.launch; see docs/distributed.md)",
    "mcp": "MCP tools (docs/mcp.md)",
    "config": "profiles and config file (precedence: flags > --config > --client > --profile)",
    "access": "access",
    "divergence": "batch-divergence monitor",
    "multi-model": "multi-model serving (instead of the MODEL argument)",
    "limits": "limits and reliability",
}

BATCH_DIVERGENCE_ACTIONS = ("warn", "serialize")
MEMORY_ACTIONS = ("off", "warn", "reduce-context", "reject-new")
_SAMPLING = SamplingParams()  # the server's sampling defaults are the neutral (OpenAI) values
MiB = 2**20
SPECULATIVE_TOKENS = 4  # tokens a row may propose per step when speculating without --num-speculative-tokens
ENGINE_RESTARTS = 3  # restarts in a row of a crashed engine process without --engine-restarts
MAX_LORAS = 8  # adapters held at once with --lora and without --max-loras


# -- checks that need other modules (imported when a value is checked, not at startup) --------------

def _tool_parser(name: str) -> str:
    from ..parsers.aliases import canonical_tool_parser

    return canonical_tool_parser(name)


def _reasoning_parser(name: str) -> str:
    from ..parsers.aliases import canonical_reasoning_parser

    return canonical_reasoning_parser(name)


def _sampling(field: str):
    def check(value) -> str | None:  # the request rules (SamplingParams.validate) for the same field
        try:
            SamplingParams(**{field: value}).validate()
        except ValueError as exc:
            message = str(exc)
            if not message.startswith(f"{field} "):
                raise
            return message.removeprefix(f"{field} ")
        return None

    return check


def _mcp_config(path: str) -> None:
    """The MCP servers file, read and checked now so a bad file fails before any model is loaded."""
    from ..mcp.config import MCPConfigError, load_mcp_config

    try:
        import jsonschema  # noqa: F401
        import mcp  # noqa: F401
    except ImportError:
        from ..extras import install_hint

        raise ValueError(f"needs the MCP SDK (the 'mcp' extra): {install_hint('mcp')}")
    try:
        load_mcp_config(path)
    except MCPConfigError as exc:
        raise ValueError(str(exc))


def _model_specs(entries) -> None:
    from ..models.model_specs import parse_model_specs

    parse_model_specs(entries)  # ModelSpecError is a ValueError


def _audio(kind: str):
    def convert(value: str) -> str:
        from ..models.audio_aliases import audio_model

        return audio_model(value, kind)  # a short name of vllm-mlx 0.2.x (whisper-large-v3) -> its repo id

    return convert


def _lora_specs(entries) -> tuple:
    from ..engine.lora_files import parse_lora_specs

    return parse_lora_specs(entries)  # AdapterError is a ValueError


def _profile(name: str) -> None:
    from ..profiles import serving_profile

    serving_profile(name)


def _client(name: str) -> str:
    from ..profiles import client_profile

    return client_profile(name).name  # a name of vllm-mlx 0.2.x (goose-text) -> ours (goose)


_NO_LIMIT = "must be 0 (no limit beyond the context budget) or positive"

OPTIONS: tuple[Option, ...] = (
    # -- the server --------------------------------------------------------------------------------
    Option("model", None, "a local model folder or a Hugging Face repo id (default: the built-in demo model)",
           flags=(), nargs="?"),
    Option("host", "127.0.0.1", "bind address (default: %(default)s)"),
    Option("port", 8000, "port (default: %(default)s)", int, check=within(0, 65535)),
    Option("served_model_name", None, "name(s) the model is served under; the first is reported in responses",
           nargs="+"),
    Option("max_num_seqs", 32, "most sequences decoded together in one batch (default: %(default)s)", int,
           check=at_least(1)),
    Option("max_num_batched_tokens", 2048, "token budget of one engine step: decode rows plus prompt chunks "
           "(default: %(default)s)", int, check=at_least(1)),
    Option("max_tokens", 512, "completion length for requests that give no max_tokens (default: %(default)s)",
           int, check=at_least(1)),
    Option("max_model_len", None, "context budget: prompt + completion tokens (default: from the model config)",
           int, check=at_least(1)),
    Option("dtype", "auto", "compute dtype for unquantized weights; auto = float32 on the CPU backend, the "
           "model's own dtype on a GPU (default: %(default)s)",
           choices=("auto", "float32", "bfloat16", "float16", "model")),
    Option("trust_remote_code", False, "allow models whose config names a custom Python model file", bool),
    Option("api_key", None, "require this key (Bearer or x-api-key) on every route but /health and / (/health "
           "then shows liveness only to requests without it); repeatable; default: $VLLM_MLX_API_KEY",
           append=True),
    Option("tool_call_parser", "auto", "tool-call format: auto (from the chat template), none, or a name "
           "(hermes, qwen3_coder, llama3_json, pythonic, llama4_pythonic, mistral, deepseek_v3, kimi_k2, "
           "granite, nemotron_json, xlam, functionary_v3, glm45, lfm2, openai; earlier names such as qwen or "
           "llama are mapped)", convert=_tool_parser),
    Option("reasoning_parser", "auto", "reasoning format: auto, none, or qwen3, deepseek_r1, mistral, "
           "openai_gptoss", convert=_reasoning_parser),
    Option("enable_auto_tool_choice", False, "accepted for compatibility: tool calls are parsed whenever a "
           "request offers tools", bool),
    Option("strict_model_id", False, "answer 404 model_not_found unless the request names a served name or "
           "alias (default: any name is served, as clients often send 'default')", bool),
    Option("deterministic", False, "identical requests give identical output under any concurrent load: every "
           "row is computed at batch size 1 and prompts are prefilled alone in fixed-size chunks", bool),
    Option("speculative", "auto", "speculative decoding: ngram proposes the tokens that followed the latest "
           "earlier occurrence of a request's newest tokens in its prompt or output; draft lets --draft-model "
           "propose; mtp, the checkpoint's multi-token-prediction head; one forward of the model checks the "
           "proposals; greedy output unchanged, sampled output keeps its distribution; the engine verifies only "
           "while that measures faster than plain steps (docs/speculative.md). auto (the default): draft with "
           "--draft-model, else ngram where the model's caches can drop rejected positions, off with "
           "--deterministic", choices=("auto", "off", "ngram", "draft", "mtp")),
    Option("draft_model", None, "a smaller model with the served model's tokenizer (folder or Hugging Face repo "
           "id) that proposes tokens for --speculative draft; giving it turns that on", metavar="MODEL"),
    Option("num_speculative_tokens", None, f"with --speculative: most tokens a request proposes per step "
           f"(default: {SPECULATIVE_TOKENS})", int, check=at_least(1)),
    Option("lora", None, "serve LoRA adapter folders (mlx-lm's or PEFT's) beside the model; requests name one as "
           "model (NAME or MODEL:NAME) or adapters; rows of different adapters share each batch (docs/lora.md)",
           object, nargs="+", metavar="NAME=PATH", convert=_lora_specs),
    Option("max_loras", None, f"with --lora: adapters held in memory at once; the least recently used idle one "
           f"gives way (default: {MAX_LORAS})", int, check=at_least(1)),
    Option("continuous_batching", False, "accepted for compatibility: batching is always on", bool),
    Option("shutdown_timeout", 30.0, "on SIGTERM, seconds in-flight requests may keep running before they are "
           "ended with a final event (default: %(default)s)", float, check=not_negative),
    Option("request_log", None, "append one JSON line per HTTP request to FILE: route, status, auth scheme, "
           "user agent, and a summary of the body (stream, roles, tool names; no prompt text)", metavar="FILE"),
    Option("log_level", "info", None, choices=("debug", "info", "warning", "error")),
    Option("sse_keepalive", 15.0, "while a stream waits for its first token (queueing, a long prefill), send a "
           "keepalive every SECONDS: an SSE comment on chat/completions/Responses, a ping event on /v1/messages; "
           "0 turns it off (default: %(default)s)", float, metavar="SECONDS", check=not_negative),
    # -- prefix cache ------------------------------------------------------------------------------
    Option("prefix_cache", True, "disable reuse of keys/values across requests that share a prompt prefix",
           bool, "prefix cache", flags=("--no-prefix-cache",), switch_value=False,
           more_flags=(Flag("--enable-prefix-caching", True,
                            "accepted for compatibility: the prefix cache is on by default"),)),
    Option("cache_memory_mb", None, "prefix-cache budget in MB (default: --cache-memory-fraction of the memory "
           "free at start)", int, "prefix cache", check=not_negative),
    Option("cache_memory_fraction", 0.25, "share of the memory free at start the prefix cache may use without "
           "--cache-memory-mb (default: %(default)s)", float, "prefix cache", check=fraction),
    Option("prefix_block_size", 64, "tokens per cached block (default: %(default)s)", int, "prefix cache",
           check=at_least(1)),
    Option("kv_cache_bits", None, "store cached blocks quantized to 8 or 4 bits", int, "prefix cache",
           choices=(4, 8)),
    Option("kv_cache_dir", None, "persist cached blocks in this folder (safetensors), so a restarted server "
           "still hits", group="prefix cache"),
    Option("kv_cache_dir_mb", 4096, "size bound of --kv-cache-dir (default: %(default)s)", int, "prefix cache",
           check=at_least(1)),
    Option("checkpoint_stride", 4096, "models with recurrent or sliding-window layers: also checkpoint long "
           "prompts every this many tokens, besides template boundaries and prompt/completion ends (0: off; "
           "default: %(default)s)", int, "prefix cache", check=at_least(0, "must be 0 (off) or positive")),
    Option("verify_cache_restores", 0.0, "re-check this fraction of prefix-cache restores against a fresh "
           "prefill; mismatches are counted in /metrics and the request uses the fresh cache (default: 0)",
           float, "prefix cache", metavar="RATE", check=within(0, 1, "must be a rate between 0 and 1")),
    Option("warm_prompts", None, "a JSON or JSONL file of prompts (strings, or chat message lists) prefilled "
           "at startup", group="prefix cache"),
    # -- models beside the chat model --------------------------------------------------------------
    Option("embedding_model", None, "serve /v1/embeddings and /v1/rerank (mlx-embeddings)", group="extra models"),
    Option("stt_model", None, "serve /v1/audio/transcriptions and /v1/audio/translations (mlx-audio "
           "speech-to-text; short names such as whisper-large-v3 or parakeet are mapped)", group="extra models",
           convert=_audio("transcription")),
    Option("tts_model", None, "serve /v1/audio/speech (mlx-audio text-to-speech; kokoro is mapped)",
           group="extra models", convert=_audio("speech")),
    Option("preload_extra_models", False, "load the models above at startup instead of on their first request",
           bool, "extra models"),
    Option("max_embedding_batch_tokens", 8192, "padded tokens of one embedding forward; concurrent requests "
           "share forwards up to this size (default: %(default)s)", int, "extra models", check=at_least(1)),
    Option("max_audio_upload_mb", 25.0, "largest audio upload accepted, in MiB; larger ones get 413 "
           "(default: %(default)s)", float, "extra models", check=positive),
    Option("max_audio_seconds", 1800.0, "longest audio upload, read from its header before decoding; longer "
           "ones get 400 (default: %(default)s)", float, "extra models", check=positive),
    Option("min_audio_sample_rate", 8000, "lowest sample rate of an audio upload, in Hz; lower ones get 400 "
           "(default: %(default)s)", int, "extra models", check=at_least(1)),
    # -- media URLs --------------------------------------------------------------------------------
    Option("media_max_mb", 20.0, "largest fetched or inlined media file (default: %(default)s)", float, "media",
           check=positive),
    Option("media_timeout", 10.0, "seconds one media fetch may take, redirects included", float, "media",
           check=positive),
    Option("media_allow_private", False, "allow media URLs that resolve to loopback, private, link-local or "
           "metadata addresses", bool, "media"),
    Option("media_allowed_hosts", (), "host names exempt from the private-address check", group="media",
           nargs="+", metavar="HOST"),
    Option("media_local_dir", None, "allow file:// and absolute-path media inside this directory (off by "
           "default)", group="media"),
    # -- vision-language models --------------------------------------------------------------------
    Option("mllm", False, "load the model as a vision-language model (default: detected from its metadata)",
           bool, "vision"),
    Option("text_only", False, "serve a vision-language folder (e.g. Qwen3.5) as a text model through mlx-lm: "
           "the vision tower is not loaded and requests with images get a 400 (default: detected)", bool,
           "vision"),
    Option("vision_cache_mb", 512, "vision-embedding cache, keyed by image content hash (default: %(default)s)",
           int, "vision", check=not_negative),
    Option("max_image_pixels", 40_000_000, "largest image or video frame (width x height) accepted, checked on "
           "its header before decoding (default: %(default)s)", int, "vision", check=at_least(1)),
    Option("max_request_pixels", 64_000_000, "pixels of all images and sampled video frames of one request "
           "together, checked on their headers before decoding (default: %(default)s)", int, "vision",
           check=at_least(1)),
    Option("max_media_per_request", 16, "images + videos in one request", int, "vision", check=not_negative),
    Option("video_fps", 2.0, "default video frame sampling rate", float, "vision", check=positive),
    Option("video_max_frames", 32, "frames sampled from one video at most", int, "vision", check=at_least(1)),
    # -- sampling defaults: the request rules apply -------------------------------------------------
    Option("default_temperature", _SAMPLING.temperature, None, float, "sampling", check=_sampling("temperature")),
    Option("default_top_p", _SAMPLING.top_p, None, float, "sampling", check=_sampling("top_p")),
    Option("default_top_k", _SAMPLING.top_k, "0 disables top-k", int, "sampling", check=_sampling("top_k")),
    Option("default_min_p", _SAMPLING.min_p, None, float, "sampling", check=_sampling("min_p")),
    Option("default_presence_penalty", _SAMPLING.presence_penalty, None, float, "sampling",
           check=_sampling("presence_penalty")),
    Option("default_frequency_penalty", _SAMPLING.frequency_penalty, None, float, "sampling",
           check=_sampling("frequency_penalty")),
    Option("default_repetition_penalty", _SAMPLING.repetition_penalty, None, float, "sampling",
           check=_sampling("repetition_penalty")),
    Option("default_max_thinking_tokens", None, "reasoning budget for requests that give no max_thinking_tokens "
           "or reasoning_effort: past it the reasoning block is closed (default: none)", int, "sampling",
           flags=("--default-max-thinking-tokens", "--max-thinking-tokens"), check=at_least(0)),
    # -- distributed serving -----------------------------------------------------------------------
    Option("distributed", False, "shard the model over the ranks of an mlx.launch job: rank 0 serves HTTP and "
           "schedules, every rank runs the same forward passes on its shard", bool, "distributed"),
    Option("distributed_timeout", 60.0, "seconds one engine step (or a wait for rank 0) may take before a rank "
           "is considered lost and the job exits; also how long the ranks try to reach each other at start "
           "(default: %(default)s)", float, "distributed", check=positive),
    Option("distributed_parallelism", "auto", "how the model is split: tensor (every layer over all ranks; "
           "needs fast links), pipeline (a run of layers per rank; fewer round trips per step, no prefix "
           "cache); auto = tensor when mlx-lm can shard the architecture, else pipeline", group="distributed",
           choices=("auto", "tensor", "pipeline")),
    # -- MCP ---------------------------------------------------------------------------------------
    Option("mcp_config", None, "a JSON file of MCP servers ({\"mcpServers\": ...}, plus \"policy\"): serves "
           "/v1/mcp/* and lets chat requests use the allowed tools", group="mcp", check=_mcp_config),
    Option("mcp_auto", False, "run the server-side MCP tool loop for every chat request that does not send "
           "\"mcp\"", bool, "mcp"),
    # -- profiles and config file ------------------------------------------------------------------
    Option("config", None, "TOML or YAML file of serve settings; keys are option names (see "
           "docs/operator-guide.md)", group="config", metavar="FILE", cli_only=True),
    Option("profile", None, "serving profile (see `vllm-mlx profiles`): text-default, text-deterministic, "
           "text-tools, text-json, mllm-default, mllm-correctness", group="config", metavar="NAME",
           check=_profile),
    Option("client", None, "client profile: server settings the client needs, and its client-side settings "
           "printed at startup (claude-code, codex, opencode, open-webui, continue, qwen-code, ...)",
           group="config", metavar="NAME", convert=_client),
    Option("print_config", False, "print the resolved settings and where each came from, then exit without "
           "loading the model", bool, "config", cli_only=True),
    Option("print_format", "toml", "format of --print-config", group="config", choices=("toml", "json"),
           cli_only=True),
    # -- access ------------------------------------------------------------------------------------
    Option("rate_limit", None, "requests per minute per API key (per client IP without --api-key); over it: "
           "429 + Retry-After (default: no limit)", int, "access", metavar="N",
           check=at_least(1, "must be at least 1 request per minute")),
    Option("cors_origins", (), "origins browsers may call the API from ('*' for any); default: none (same "
           "origin only)", group="access", nargs="+", metavar="ORIGIN"),
    Option("cors_methods", ("GET", "POST", "OPTIONS"), None, group="access", nargs="+", metavar="METHOD"),
    Option("cors_headers", ("Authorization", "Content-Type", "x-api-key", "anthropic-version", "anthropic-beta"),
           None, group="access", nargs="+", metavar="HEADER"),
    Option("cors_allow_credentials", False, None, bool, "access"),
    # -- batch-divergence monitor ------------------------------------------------------------------
    Option("batch_divergence_monitor", False, "probe at startup and then periodically whether greedy outputs "
           "change when requests share a batch (serial vs concurrent runs of fixed prompts)", bool, "divergence"),
    Option("batch_divergence_threshold", 0.95, "token agreement below which the monitor acts (default: "
           "%(default)s)", float, "divergence", check=within(0, 1, "must be within 0..1")),
    Option("batch_divergence_action", "warn", "warn: log and report; serialize: run one request at a time from "
           "then on (default: %(default)s)", group="divergence", choices=BATCH_DIVERGENCE_ACTIONS),
    Option("batch_divergence_interval", 300.0, "seconds between probes; 0 probes at startup only (default: "
           "%(default)s)", float, "divergence", check=not_negative),
    # -- multi-model serving -----------------------------------------------------------------------
    Option("models", None, "serve these models under these names (a local folder or a repo id each; "
           "NAME,ALIAS=MODEL adds aliases); a model is loaded on its first request, and requests naming any "
           "other model get 404", object, "multi-model", nargs="+", metavar="NAME=MODEL", check=_model_specs),
    Option("model_ttl", None, "unload a model after this many idle seconds (default: never)", float,
           "multi-model", check=positive),
    Option("models_memory_gb", None, "bound on the weights of all loaded models; the least recently used idle "
           "models are unloaded to make room (default: no bound)", float, "multi-model", check=positive),
    Option("preload_models", False, "load every --models entry at startup (within the memory bound)", bool,
           "multi-model"),
    # -- limits and reliability --------------------------------------------------------------------
    Option("max_request_bytes", 32 * MiB, "largest HTTP request body; larger ones get 413 (default: "
           "%(default)s)", int, "limits", check=at_least(1)),
    Option("max_messages", 4096, "most messages (or input items) in one request (default: %(default)s)", int,
           "limits", check=at_least(1)),
    Option("max_tools", 512, "most tool definitions in one request (default: %(default)s)", int, "limits",
           check=at_least(1)),
    Option("max_tokens_cap", None, "reject requests whose max_tokens exceeds this (default: only the context "
           "budget)", int, "limits", check=at_least(0, _NO_LIMIT), convert=lambda v: v or None),
    Option("max_prompt_tokens", None, "reject prompts longer than this (default: only the context budget)", int,
           "limits", check=at_least(0, _NO_LIMIT), convert=lambda v: v or None),
    Option("max_prompts", 256, "most prompts in one /v1/completions request (default: %(default)s)", int,
           "limits", check=at_least(1)),
    Option("memory_budget_mb", None, "KV-cache memory all admitted requests may need together; beyond it "
           "requests wait, then get 503 with Retry-After (default: --memory-budget-fraction of free memory)",
           float, "limits", check=positive),
    Option("memory_budget_fraction", 0.8, None, float, "limits", check=fraction),
    Option("admission_wait", 5.0, "seconds a request waits for memory before 503 (default: %(default)s)", float,
           "limits", check=not_negative),
    Option("header_timeout", 10.0, "seconds a client has to send a request's headers; slower connections are "
           "closed (default: %(default)s)", float, "limits", check=positive),
    Option("body_timeout", 120.0, "seconds a client has to send a request's body once its headers are in; past "
           "it 408 and the connection is closed (default: %(default)s)", float, "limits", check=positive),
    Option("write_timeout", 60.0, "a connection whose client reads nothing of a waiting response for this many "
           "seconds is closed (default: %(default)s)", float, "limits", check=positive),
    Option("stream_buffer_mb", 16.0, "output a streamed request may have waiting for a slow client, in MiB; "
           "past it the request is stopped (default: %(default)s)", float, "limits", check=positive),
    Option("stream_buffer_events", 16384, "deltas a streamed request may have waiting for a slow client; past "
           "it the request is stopped (default: %(default)s)", int, "limits", check=at_least(1)),
    Option("request_timeout", None, "seconds a non-streamed request may run; past it the generation is stopped "
           "and the client gets 504 (default: no limit)", float, "limits", flags=("--timeout", "--request-timeout"),
           metavar="SECONDS", check=positive),
    Option("memory_action", "warn", "memory guardrail: off, or what to do while this process uses more than "
           "--memory-limit-threshold percent of the machine's memory: warn (log), reduce-context (halve the "
           "context budget of new requests), reject-new (new generations get 503) (default: %(default)s)",
           group="limits", choices=MEMORY_ACTIONS),
    Option("memory_warn_threshold", 70.0, "percent of the machine's memory past which the guardrail logs a "
           "warning (default: %(default)s)", float, "limits", check=within(0.0001, 100, "must be a percent in "
                                                                                  "(0, 100]")),
    Option("memory_limit_threshold", 85.0, "percent of the machine's memory past which --memory-action applies "
           "(default: %(default)s)", float, "limits", check=within(0.0001, 100, "must be a percent in (0, 100]")),
    Option("memory_monitor_interval", 5.0, "seconds between memory readings of the guardrail (default: "
           "%(default)s)", float, "limits", check=positive),
    Option("watchdog_stall", 60.0, "an engine step longer than this marks /health 503 until it moves (default: "
           "%(default)s)", float, "limits", check=positive),
    Option("watchdog_exit", 0.0, "a step longer than this shuts the server down cleanly (default: 0 = never)",
           float, "limits", check=not_negative),
    Option("engine_process", False, "run the engine (model, scheduler, prefix cache, sampler) in a child process "
           "of its own: it does not share the GIL with HTTP, and a crash of it fails only the requests in flight; "
           "it is restarted (see docs/architecture.md)", bool, "limits"),
    Option("engine_restarts", None, f"with --engine-process: restarts of a crashed engine process in a row, with "
           f"backoff, before the server reports it failed (default: {ENGINE_RESTARTS})", int, "limits",
           check=not_negative),
    Option("public_metrics", False, "serve /metrics without the API key", bool, "limits"),
    Option("private_health", False, "require the API key on /health too", bool, "limits"),
)
