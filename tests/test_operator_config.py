"""Serving and client profiles, --config files, precedence, --print-config, `profiles` and `doctor`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib

import pytest

from conftest import VLLM_MLX
from vllm_mlx.client_setup import Endpoint, client_instructions
from vllm_mlx.config import server_config
from vllm_mlx.config_file import ConfigError, resolve_serve_settings
from vllm_mlx.operator_cli import warn_if_exposed
from vllm_mlx.profiles import CLIENT_PROFILES, SERVING_PROFILES


def resolve(*argv: str):
    resolved = resolve_serve_settings(list(argv), environ={})
    return server_config(resolved.values), resolved


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([VLLM_MLX, *args], capture_output=True, text=True, timeout=timeout)


def setting(resolved, key):
    return resolved.values[key]


# -- serving profiles -----------------------------------------------------------------------------

EXPECTED_SERVING = {  # what each profile must do to the ServerConfig the server is built from
    "text-default": dict(tool_call_parser="auto", reasoning_parser="auto", prefix_cache=True, deterministic=False),
    "text-deterministic": dict(deterministic=True, temperature=0.0),
    "text-tools": dict(tool_call_parser="auto", max_tokens=4096, temperature=0.6),
    "text-json": dict(reasoning_parser="none", max_tokens=2048, temperature=0.0),
    "mllm-default": dict(mllm=True, batch_divergence_monitor=False),
    "mllm-correctness": dict(mllm=True, batch_divergence_monitor=True, batch_divergence_action="serialize"),
}


def test_every_serving_profile_has_expectations():
    assert set(EXPECTED_SERVING) == set(SERVING_PROFILES)


@pytest.mark.parametrize("name", sorted(SERVING_PROFILES))
def test_serving_profile_resolves(name):
    config, resolved = resolve("--profile", name)
    assert config.profile == name
    for key, value in SERVING_PROFILES[name].settings.items():
        assert setting(resolved, key) == value
        assert resolved.sources[key] == f"profile {name}"
    for key, value in EXPECTED_SERVING[name].items():
        actual = config.sampling_defaults.temperature if key == "temperature" else getattr(config, key)
        assert actual == value, (name, key)


# -- client profiles ------------------------------------------------------------------------------

EXPECTED_CLIENT = {  # ServerConfig max_tokens per client, and what the client-side text must contain
    "claude-code": (512, ["ANTHROPIC_BASE_URL=http://127.0.0.1:8123\n", "ANTHROPIC_API_KEY=", "--model m1"]),
    "codex": (8192, ['base_url = "http://127.0.0.1:8123/v1"', 'wire_api = "responses"', 'model = "m1"',
                     'env_key = "VLLM_MLX_API_KEY"']),
    "opencode": (4096, ['"baseURL": "http://127.0.0.1:8123/v1"', '"@ai-sdk/openai-compatible"', '"vllm-mlx/m1"']),
    "open-webui": (2048, ["OPENAI_API_BASE_URL=http://127.0.0.1:8123/v1", "ENABLE_OLLAMA_API=False"]),
    "continue": (4096, ["apiBase: http://127.0.0.1:8123/v1", "provider: openai", "model: m1"]),
    "qwen-code": (8192, ["OPENAI_BASE_URL=http://127.0.0.1:8123/v1", "OPENAI_MODEL=m1", "--auth-type openai"]),
    "goose": (4096, ["OPENAI_HOST=http://127.0.0.1:8123\n", "GOOSE_PROVIDER=openai", "GOOSE_MODEL=m1"]),
    "cherry-studio": (2048, ["http://127.0.0.1:8123\n", "model:               m1"]),
    "chatbox": (2048, ["http://127.0.0.1:8123/v1", "OpenAI API Compatible"]),
    "jan": (2048, ["http://127.0.0.1:8123/v1", "model:               m1"]),
    "anythingllm": (2048, ["GENERIC_OPEN_AI_BASE_PATH=http://127.0.0.1:8123/v1", "GENERIC_OPEN_AI_MODEL_PREF=m1"]),
    "librechat": (2048, ['baseURL: "http://127.0.0.1:8123/v1"', 'default: ["m1"]']),
    "generic-openai": (2048, ["OPENAI_BASE_URL=http://127.0.0.1:8123/v1", "model_name: m1",
                              'base_url="http://127.0.0.1:8123/v1"']),
}


def test_every_client_profile_has_expectations():
    assert set(EXPECTED_CLIENT) == set(CLIENT_PROFILES)


@pytest.mark.parametrize("name", sorted(CLIENT_PROFILES))
def test_client_profile_resolves_and_prints_client_settings(name):
    config, resolved = resolve("--client", name, "--port", "8123", "--served-model-name", "m1")
    max_tokens, snippets = EXPECTED_CLIENT[name]
    assert config.client == name
    assert config.max_tokens == max_tokens
    assert config.tool_call_parser == "auto" and config.reasoning_parser == "auto"
    assert config.strict_model_id is False
    for key in CLIENT_PROFILES[name].settings:
        assert resolved.sources[key] == f"client {name}"
    from vllm_mlx.operator_cli import endpoint_for

    text = client_instructions(CLIENT_PROFILES[name], endpoint_for(config))
    for snippet in snippets:
        assert snippet in text, (name, snippet, text)
    assert "any key works" in text  # no --api-key
    keyed = client_instructions(CLIENT_PROFILES[name], Endpoint("http://127.0.0.1:8123", "m1", auth=True))
    assert "<your --api-key>" in keyed


def test_client_snippets_are_valid_files():
    e = Endpoint("http://127.0.0.1:9", "m1", auth=False, context=8192)
    opencode = client_instructions(CLIENT_PROFILES["opencode"], e)
    body = json.loads(opencode[opencode.index("{"):opencode.rindex("}") + 1])
    assert body["provider"]["vllm-mlx"]["models"]["m1"]["limit"]["context"] == 8192
    codex = client_instructions(CLIENT_PROFILES["codex"], e)
    toml_text = "\n".join(line[2:] for line in codex.splitlines() if line.startswith("  ") and "export" not in line
                          and "codex" != line.strip())
    parsed = tomllib.loads(toml_text)
    assert parsed["model_providers"]["vllm-mlx"]["wire_api"] == "responses"


# -- config files and precedence -------------------------------------------------------------------

def test_toml_and_yaml_config_with_dash_and_underscore_keys(tmp_path):
    toml_file = tmp_path / "c.toml"
    toml_file.write_text('max-num-seqs = 7\nmax_tokens = 99\nno-prefix-cache = true\napi-key = "s3"\n'
                         'default-temperature = 0.2\nserved-model-name = ["a", "b"]\nrate_limit = 30\n'
                         'cors-origins = "http://x.test"\nbatch-divergence-threshold = 0.9\n')
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("max-num-seqs: 7\nmax_tokens: 99\nprefix_cache: false\napi_key: [s3]\n"
                         "default_temperature: 0.2\nserved_model_name: [a, b]\nrate-limit: 30\n"
                         "cors_origins: ['http://x.test']\nbatch_divergence_threshold: 0.9\n")
    for file in (toml_file, yaml_file):
        config, _ = resolve("--config", str(file))
        assert (config.max_num_seqs, config.max_tokens, config.prefix_cache) == (7, 99, False)
        assert config.api_keys == ("s3",) and config.served_model_names == ("a", "b")
        assert config.sampling_defaults.temperature == 0.2 and config.rate_limit == 30
        assert config.cors_origins == ("http://x.test",) and config.batch_divergence_threshold == 0.9


def test_precedence_flags_over_config_over_client_over_profile(tmp_path):
    file = tmp_path / "c.toml"
    file.write_text('max_tokens = 300\nprofile = "text-json"\n')
    # text-json sets max_tokens 2048 and temperature 0; codex sets max_tokens 8192; the file 300; the flag 50
    config, r = resolve("--config", str(file), "--client", "codex")
    assert config.max_tokens == 300 and r.sources["max_tokens"] == f"config {file}"
    assert config.profile == "text-json" and config.sampling_defaults.temperature == 0.0
    assert r.sources["default_temperature"] == "profile text-json"
    config, r = resolve("--config", str(file), "--client", "codex", "--max-tokens", "50")
    assert config.max_tokens == 50 and r.sources["max_tokens"] == "command line"
    config, _ = resolve("--client", "codex", "--profile", "text-json")
    assert config.max_tokens == 8192  # client over profile
    config, _ = resolve("--profile", "text-json")
    assert config.max_tokens == 2048
    # a flag equal to its default still wins over the layers below
    config, _ = resolve("--profile", "text-json", "--max-tokens", "512")
    assert config.max_tokens == 512
    # the command line's --profile beats the file's
    config, _ = resolve("--config", str(file), "--profile", "text-tools")
    assert config.profile == "text-tools" and config.sampling_defaults.temperature == 0.6


@pytest.mark.parametrize("content, message", [
    ("max_tokns = 5\n", "unknown setting 'max_tokns'"),
    ("max_tokens = \"many\"\n", "'max_tokens' must be of type int"),
    ("max_tokens = 2.5\n", "must be a whole number"),
    ("dtype = \"float8\"\n", "must be one of auto, float32"),
    ("deterministic = 1\n", "must be true or false"),
    ("print-config = true\n", "can only be given on the command line"),
    ("mllm = \"yes\"\n", "'mllm' must be true or false"),
    ("profile = \"text-fancy\"\n", "unknown serving profile 'text-fancy'"),
    ("tool-call-parser = false\n", "not true/false"),
    ("max_tokens = [\n", "is not valid TOML"),
])
def test_bad_config_files_fail_clearly(tmp_path, content, message):
    file = tmp_path / "bad.toml"
    file.write_text(content)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        resolve("--config", str(file))


def test_cli_reports_config_errors_without_traceback(tmp_path):
    file = tmp_path / "bad.yaml"
    file.write_text("max-num-seq: 4\n")
    result = run_cli("serve", "--config", str(file))
    assert result.returncode == 2
    assert f"error: config file {file}: unknown setting 'max-num-seq'" in result.stderr
    assert "Traceback" not in result.stderr
    result = run_cli("serve", "--client", "nope", "--print-config")
    assert result.returncode == 2 and "unknown client profile 'nope'" in result.stderr
    result = run_cli("serve", "--config", str(tmp_path / "missing.toml"))
    assert result.returncode == 2 and "cannot read config file" in result.stderr


def test_print_config_round_trips_and_redacts_keys(tmp_path):
    result = run_cli("serve", "some/model", "--profile", "text-tools", "--client", "opencode", "--api-key", "secret",
                     "--max-num-seqs", "3", "--print-config")
    assert result.returncode == 0, result.stderr
    assert "secret" not in result.stdout and "<redacted>" in result.stdout
    assert 'max-num-seqs = 3  # command line' in result.stdout
    assert 'default-temperature = 0.6  # profile text-tools' in result.stdout
    assert 'max-tokens = 4096  # client opencode' in result.stdout
    saved = tmp_path / "resolved.toml"
    saved.write_text(result.stdout.replace('"<redacted>"', '"secret"'))
    again, _ = resolve("--config", str(saved))
    first, _ = resolve("some/model", "--profile", "text-tools", "--client", "opencode", "--api-key", "secret",
                       "--max-num-seqs", "3")
    assert again == first
    as_json = run_cli("serve", "--profile", "mllm-correctness", "--print-config", "--print-format", "json")
    body = json.loads(as_json.stdout)
    assert body["settings"]["batch-divergence-action"] == "serialize" and body["settings"]["mllm"] is True
    assert body["sources"]["batch-divergence-monitor"] == "profile mllm-correctness"


def test_profiles_command_lists_both_kinds():
    result = run_cli("profiles")
    assert result.returncode == 0
    for name in [*SERVING_PROFILES, *CLIENT_PROFILES]:
        assert f"  {name}" in result.stdout
    assert "batch_divergence_action=serialize" in result.stdout
    one = run_cli("profiles", "codex")
    assert one.returncode == 0 and 'wire_api = "responses"' in one.stdout
    assert run_cli("profiles", "nope").returncode == 2


def test_loud_warning_only_when_exposed_without_key(capsys):
    config, _ = resolve("--host", "0.0.0.0")
    warn_if_exposed(config)
    assert "WITHOUT an API key" in capsys.readouterr().err
    for argv in (("--host", "0.0.0.0", "--api-key", "k"), ("--host", "127.0.0.1"), ("--host", "::1")):
        config, _ = resolve(*argv)
        warn_if_exposed(config)
        assert capsys.readouterr().err == ""
    assert resolve()[0].host == "127.0.0.1"  # loopback unless told


# -- doctor -------------------------------------------------------------------------------------------

def test_doctor_machine_checks_plain_and_json():
    plain = run_cli("doctor")
    assert plain.returncode == 0, plain.stdout + plain.stderr
    for word in ("backend: MLX", "blas:", "memory:", "mlx-lm "):
        assert word in plain.stdout
    body = json.loads(run_cli("doctor", "--json").stdout)
    assert body["ok"] is True and body["backend"]["device"] in ("cpu", "gpu")
    assert body["versions"]["mlx-lm"] and body["memory"]["available_bytes"] > 0
    assert {c["name"] for c in body["checks"]} >= {"backend", "blas", "memory", "versions"}


def test_doctor_model_checks(tiny_qwen3, tmp_path):
    body = json.loads(run_cli("doctor", str(tiny_qwen3), "--json").stdout)
    checks = {c["name"]: c for c in body["checks"]}
    assert body["ok"] is True
    assert checks["architecture"]["status"] == "ok" and "mlx_lm.models.qwen3" in checks["architecture"]["detail"]
    assert checks["tokenizer"]["status"] == "ok" and checks["chat template"]["status"] == "ok"
    assert checks["weights"]["status"] == "ok" and body["model"]["weights_bytes"] > 0
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "no_such_arch"}))
    result = run_cli("doctor", str(broken))
    assert result.returncode == 1
    assert "[FAIL] architecture: model_type 'no_such_arch' is not supported by mlx-lm" in result.stdout
    assert "[FAIL] tokenizer" in result.stdout and "[FAIL] weights: no *.safetensors" in result.stdout
    missing = run_cli("doctor", str(tmp_path / "absent"))
    assert missing.returncode == 1 and "[FAIL] model files" in missing.stdout


def test_client_context_read_from_a_local_folder_or_the_hub_cache(tiny_qwen3, tmp_path):
    from vllm_mlx.operator_cli import endpoint_for

    config, _ = resolve(str(tiny_qwen3), "--client", "opencode")
    expected = json.loads((tiny_qwen3 / "config.json").read_text())["max_position_embeddings"]
    assert endpoint_for(config).context == expected
    assert endpoint_for(resolve(str(tiny_qwen3), "--max-model-len", "333")[0]).context == 333
    snapshot = tmp_path / "hub" / "models--org--cached" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps({"max_position_embeddings": 12345}))
    (tmp_path / "hub" / "models--org--cached" / "refs").mkdir()
    (tmp_path / "hub" / "models--org--cached" / "refs" / "main").write_text("a" * 40)
    code = ("from vllm_mlx.operator_cli import context_hint; from vllm_mlx.config import ServerConfig; "
            "print(context_hint(ServerConfig(model='org/cached')), context_hint(ServerConfig(model='org/other')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub")})
    assert out.stdout.split() == ["12345", "None"], out.stderr


def test_doctor_custom_model_file_needs_trust_remote_code(scripted_qwen3):
    refused = run_cli("doctor", str(scripted_qwen3))
    assert refused.returncode == 1 and "--trust-remote-code" in refused.stdout
    trusted = json.loads(run_cli("doctor", str(scripted_qwen3), "--trust-remote-code", "--json").stdout)
    assert trusted["ok"] is True
    assert next(c for c in trusted["checks"] if c["name"] == "architecture")["status"] == "ok"
