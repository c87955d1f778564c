"""The command line of the earlier vllm-mlx 0.2.x (tests/data/seed_cli.md), walked name by name through the
real CLI as subprocesses: every command, `serve` flag (each listed value), parser name and profile either
works — mapped to ours, shown by --print-config or said in a note, never silently ignored — or stops at
once with one line naming what to use here, exit 2, no model loaded, no traceback.

Routes, request fields and audio model names are driven against a real server in test_seed_server.py;
this walk checks that every name of the file is covered by one of the two."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from conftest import VLLM_MLX

ROOT = Path(__file__).resolve().parents[1]
SEED = (ROOT / "tests" / "data" / "seed_cli.md").read_text()
SERVER_TEST = (ROOT / "tests" / "test_seed_server.py").read_text()


def section(title: str) -> str:
    start = SEED.index(f"## {title}")
    end = SEED.find("\n## ", start + 1)
    return SEED[start:end if end > 0 else None]


def ticks(text: str) -> list[str]:
    return [" ".join(t.split()) for t in re.findall(r"`([^`]+)`", text, re.S)]


# -- the serve flags, with each value the file lists --------------------------------------------------

SWITCHES = {"--localhost", "--continuous-batching", "--deterministic", "--enable-prefix-cache",
            "--disable-prefix-cache", "--no-memory-aware-cache", "--use-paged-cache", "--kv-cache-quantization",
            "--enable-mtp", "--mtp-optimistic", "--mllm", "--disable-mllm-vision-cache", "--strict-model-id",
            "--trust-requests-when-auth-disabled", "--batch-divergence-monitor", "--enable-auto-tool-choice",
            "--offline"}
SAMPLE_VALUES = {"--default-temperature": "0.7", "--default-top-p": "0.9", "--cache-memory-mb": "512",
                 "--api-key": "seed-key", "--max-thinking-tokens": "64", "--effective-context-tokens": "4096",
                 "--embedding-model": "some-org/some-embedder", "--mcp-config": "MCP_FILE"}


def serve_cases() -> list[list[str]]:
    """One argument list per flag and listed value (parser names after `plus` join --tool-call-parser)."""
    cases, flag = [], None
    for tick in ticks(section("`serve` flags")):
        if not tick.startswith("--"):  # `harmony` / `gpt-oss`: more --tool-call-parser names
            cases.append(["--tool-call-parser", tick])
            continue
        flag, _, value = tick.partition(" ")
        if not value:
            assert flag in SWITCHES or flag in SAMPLE_VALUES, f"classify {flag} in this test"
            cases.append([flag] if flag in SWITCHES else [flag, SAMPLE_VALUES[flag]])
        else:
            cases += [[flag, v.strip()] for v in value.replace(" ", "").split("|") if v.strip()]
    return cases


CASES = serve_cases()

# Where the seed meaning is ours, what --print-config must show (name -> value), or that it is refused.
MAPPED = {
    ("--localhost",): {"host": "127.0.0.1"},
    ("--host", "0.0.0.0"): {"host": "0.0.0.0"},
    ("--timeout", "300"): {"request-timeout": 300.0},
    ("--runtime-mode", "simple"): {"max-num-seqs": 1},
    ("--disable-prefix-cache",): {"prefix-cache": False},
    ("--cache-memory-percent", "0.20"): {"cache-memory-fraction": 0.2},
    ("--paged-cache-block-size", "64"): {"prefix-block-size": 64},
    ("--kv-cache-quantization",): {"kv-cache-bits": 8},
    ("--chunked-prefill-tokens", "0"): {},
    ("--disable-mllm-vision-cache",): {"vision-cache-mb": 0},
    ("--memory-action", "reject-new"): {"memory-action": "reject-new"},
    ("--memory-warn-threshold", "70"): {"memory-warn-threshold": 70.0},
    ("--max-thinking-tokens", "64"): {"default-max-thinking-tokens": 64},
    ("--effective-context-tokens", "4096"): {"max-model-len": 4096},
    ("--tool-call-parser", "qwen"): {"tool-call-parser": "qwen3_coder"},
    ("--tool-call-parser", "liquidai"): {"tool-call-parser": "lfm2"},
    ("--tool-call-parser", "gpt-oss"): {"tool-call-parser": "openai"},
    ("--reasoning-parser", "gpt_oss"): {"reasoning-parser": "gpt_oss"},
    ("--rate-limit", "0"): {"rate-limit": None},
    ("--enable-mtp",): {"speculative": "mtp"},
}
REFUSED = {("--mtp-optimistic",), ("--cache-strategy", "legacy"), ("--prefix-cache-size", "100"), ("--offline",),
           ("--prefill-batch-size", "8"), ("--max-cache-blocks", "1000"), ("--repetition-policy", "safe")}


def run(args: list[str], env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


def assert_clean(result: subprocess.CompletedProcess, what: str) -> None:
    """Exit 0, or exit 2 with exactly one line on stderr; never a traceback."""
    assert "Traceback" not in result.stderr + result.stdout, f"{what}: {result.stderr}"
    assert result.returncode in (0, 2), f"{what}: exit {result.returncode}: {result.stderr}"
    if result.returncode == 2:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, f"{what}: refusal must be one line: {result.stderr!r}"


def print_config(*args: str) -> subprocess.CompletedProcess:
    return run([VLLM_MLX, "serve", "seed-org/seed-model", "--print-config", "--print-format", "json", *args])


@pytest.fixture(scope="module")
def mcp_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("mcp") / "mcp.json"
    path.write_text(json.dumps({"mcpServers": {"echo": {"command": sys.executable, "args": ["-c", "pass"]}}}))
    return str(path)


def test_the_file_lists_what_this_walk_expects():
    assert len(CASES) > 70 and ["--tool-call-parser", "glm47"] in CASES and ["--tool-call-parser", "harmony"] in CASES
    assert all(list(k) in CASES for k in [*MAPPED, *REFUSED]), "a mapped or refused case is not in the file"


@pytest.mark.parametrize("args", CASES, ids=lambda a: " ".join(a))
def test_serve_flag_is_mapped_or_refused_in_one_line(args, mcp_file):
    args = [mcp_file if a == "MCP_FILE" else a for a in args]
    result = print_config(*args)
    assert_clean(result, " ".join(args))
    key = tuple(a if a != mcp_file else "MCP_FILE" for a in args)
    if key in REFUSED:
        assert result.returncode == 2
    if result.returncode == 2:
        message = result.stderr.strip()
        assert message.startswith("vllm-mlx serve: error:") and args[0] in message, message
        return
    out = json.loads(result.stdout)
    settings, sources = out["settings"], out["sources"]
    from_flags = [k for k, source in sources.items() if source == "command line" and k != "model"]
    notes = [line for line in result.stderr.splitlines() if "note:" in line and args[0] in line]
    assert from_flags or notes, f"{args}: neither a setting nor a note: silently ignored"
    for name, value in MAPPED.get(key, {}).items():
        assert settings[name] == value, (args, name, settings[name])


def test_mapped_flags_combine_like_the_seed():
    result = print_config("--localhost", "--host", "0.0.0.0", "--kv-cache-quantization-bits", "4",
                          "--kv-cache-quantization", "--continuous-batching")
    assert_clean(result, "combined")
    settings = json.loads(result.stdout)["settings"]
    assert settings["host"] == "127.0.0.1"  # --localhost forces it, as before
    assert settings["kv-cache-bits"] == 4  # the bits win over the switch's default of 8
    alone = print_config("--kv-cache-quantization-bits", "4")  # as before: bits alone quantize nothing
    assert json.loads(alone.stdout)["settings"]["kv-cache-bits"] is None and "no effect" in alone.stderr
    mtp = json.loads(print_config("--enable-mtp", "--mtp-num-draft-tokens", "3").stdout)["settings"]
    assert (mtp["speculative"], mtp["num-speculative-tokens"]) == ("mtp", 3)
    alone = print_config("--mtp-num-draft-tokens", "3")  # as before: the count alone speculates nothing
    assert json.loads(alone.stdout)["settings"]["num-speculative-tokens"] is None and "no effect" in alone.stderr


def test_bad_seed_values_are_refused_in_one_line():
    for args in (["--runtime-mode", "turbo"], ["--stream-interval", "4"], ["--tool-call-parser", "bogus"],
                 ["--reasoning-parser", "llama"], ["--memory-action", "panic"], ["--timeout", "0"],
                 ["--memory-warn-threshold", "90"], ["--localhost=yes"], ["--download-timeout"]):
        result = print_config(*args)
        assert_clean(result, " ".join(args))
        assert result.returncode == 2, args


# -- parser names, profiles -------------------------------------------------------------------------

def test_every_profile_name_maps_to_ours():
    text = section("Serving profiles")
    serving = [t for t in ticks(text) if not t.endswith("-text")]
    clients = [t for t in ticks(text) if t.endswith("-text")]
    assert len(serving) == 6 and clients == ["goose-text", "open-webui-text"]
    for name in serving:
        result = print_config("--profile", name)
        assert_clean(result, name)
        assert result.returncode == 0 and json.loads(result.stdout)["settings"]["profile"] == name
    for name, ours in zip(clients, ["goose", "open-webui"]):
        result = print_config("--client", name)
        assert_clean(result, name)
        assert json.loads(result.stdout)["settings"]["client"] == ours
        shown = run([VLLM_MLX, "profiles", name])
        assert shown.returncode == 0 and shown.stdout.startswith(ours)


# -- commands ---------------------------------------------------------------------------------------

def entry_point(script: str) -> list[str]:
    """The console script as pyproject declares it, run with this Python (the venv may predate it)."""
    target = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"][script]
    module, _, func = target.partition(":")
    return [sys.executable, "-c", f"import sys; from {module} import {func}; sys.exit({func}())"]


def test_every_command_runs_or_is_refused_in_one_line(tmp_path):
    model = tmp_path / "local-model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    missing = str(tmp_path / "missing-model")
    commands = ticks(section("Commands"))
    assert len(commands) == 10, commands
    checks = {
        "vllm-mlx serve MODEL": ([VLLM_MLX, "serve", str(model), "--print-config"], 0, "model = "),
        "vllm-mlx bench MODEL": ([VLLM_MLX, "bench", missing], 2, "does not exist"),
        "vllm-mlx bench-detok [MODEL]": ([VLLM_MLX, "bench-detok", str(model)], 2, "vllm-mlx bench MODEL"),
        "vllm-mlx bench-kv-cache": ([VLLM_MLX, "bench-kv-cache"], 2, "vllm-mlx bench serve --url"),
        "vllm-mlx download MODEL [--timeout 300] [--retries 3] [--mllm]":
            ([VLLM_MLX, "download", str(model), "--timeout", "300", "--retries", "3", "--mllm"], 0, "local folder"),
        "vllm-mlx-chat --server-url URL":
            ([*entry_point("vllm-mlx-chat"), "--server-url", "http://127.0.0.1:9"], 2, "http://127.0.0.1:9/"),
        "vllm-mlx-bench --model M": ([*entry_point("vllm-mlx-bench"), "--model", missing], 2, "does not exist"),
        "python -m vllm_mlx.server --model M":
            ([sys.executable, "-m", "vllm_mlx.server", "--model", str(model), "--localhost", "--print-config"], 0,
             'host = "127.0.0.1"'),
        "scripts/serve_profile.sh PROFILE MODEL":
            ([str(ROOT / "scripts/serve_profile.sh"), "text-tools", str(model), "--print-config"], 0,
             "max-tokens = 4096  # profile text-tools"),
        "scripts/serve_client_profile.sh CLIENT MODEL":
            ([str(ROOT / "scripts/serve_client_profile.sh"), "open-webui-text", str(model), "--print-config"], 0,
             'client = "open-webui"'),
    }
    assert set(commands) <= set(checks), set(commands) - set(checks)
    for name, (args, code, expect) in checks.items():
        result = run(args, env={"VLLM_MLX": VLLM_MLX, "HF_HUB_OFFLINE": "1"})
        assert_clean(result, name)
        assert result.returncode == code, (name, result.stderr)
        assert expect in result.stdout + result.stderr, (name, result.stdout[-500:], result.stderr)


def test_download_retries_after_network_failures(tmp_path):
    result = run([VLLM_MLX, "download", "some-org/not-cached", "--retries", "1", "--timeout", "2"],
                 env={"HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path), "HF_ENDPOINT": "http://127.0.0.1:9"})
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "could not reach the model hub" in result.stderr


# -- the rest of the file: driven against a real server --------------------------------------------

def test_routes_fields_and_audio_names_are_covered_by_the_server_test():
    rest = ticks(section("Routes and request fields"))
    names = [t.split(" ", 1)[-1] if t.startswith(("GET ", "DELETE ")) else t for t in rest]
    assert "/v1/status" in names and "whisper-large-v3" in names and "message.reasoning" in names
    for name in names:
        assert name.split(".")[-1] in SERVER_TEST, f"{name} is not exercised by test_seed_server.py"
