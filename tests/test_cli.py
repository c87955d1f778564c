"""The CLI: the demo model, and clear errors for models that cannot be found offline."""

from __future__ import annotations

import re
import subprocess

import openai

from conftest import VLLM_MLX


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([VLLM_MLX, *args], capture_output=True, text=True, timeout=timeout)


def test_missing_local_folder_says_what_is_missing(tmp_path):
    missing = tmp_path / "no-such-model"
    result = run_cli("serve", str(missing))
    assert result.returncode == 2
    assert f"model folder {missing} does not exist" in result.stderr


def test_uncached_repo_id_says_how_to_fetch_it():
    result = run_cli("serve", "some-org/some-uncached-model")
    assert result.returncode == 2
    assert "is not in the Hugging Face cache" in result.stderr
    assert "hf download some-org/some-uncached-model" in result.stderr


def test_folder_without_config(tmp_path):
    result = run_cli("serve", str(tmp_path))
    assert result.returncode == 2 and "has no config.json" in result.stderr


def test_continuous_batching_flag_accepted_and_help_lists_flags():
    result = run_cli("serve", "--help")
    assert result.returncode == 0
    for flag in ("--host", "--port", "--served-model-name", "--max-num-seqs", "--max-num-batched-tokens",
                 "--max-tokens", "--continuous-batching"):
        assert flag in result.stdout


def test_demo_model_served_when_no_model_given(start_server, tmp_path_factory):
    cache = tmp_path_factory.mktemp("demo-cache")
    server = start_server("--continuous-batching", env={"VLLM_MLX_CACHE": str(cache)})
    log = server.log()
    assert "DEMO model" in log
    # first use: the build and the load say what they do, with sizes and times
    assert re.search(r"building the demo model into .*demo-model-v1", log)
    assert re.search(r"built the demo model: \d+\.\d MB in \d+\.\d s", log)
    assert re.search(r"loading demo-model-v1: 1 weight file\(s\), \d+\.\d MB", log)
    assert re.search(r"engine ready in \d+\.\d s", log)
    c = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0)
    assert c.models.list().data[0].id == "vllm-mlx-demo"
    resp = c.chat.completions.create(
        model="vllm-mlx-demo", messages=[{"role": "user", "content": "Say something"}], max_tokens=24
    )
    text = resp.choices[0].message.content
    assert resp.usage.completion_tokens > 0
    assert sum(ch.isalpha() for ch in text) >= 5, f"demo output should be visible text: {text!r}"
    stream = c.chat.completions.create(
        model="vllm-mlx-demo", messages=[{"role": "user", "content": "Stream please"}], max_tokens=16, stream=True
    )
    pieces = [ch.choices[0].delta.content for ch in stream if ch.choices and ch.choices[0].delta.content]
    assert len(pieces) >= 2
