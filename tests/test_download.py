"""`vllm-mlx download`: clear failures without network, and the already-cached path (no network needed)."""

from __future__ import annotations

import os
import shutil
import subprocess

from conftest import VLLM_MLX, free_port

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def run_download(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([VLLM_MLX, "download", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})


def cache_model(hf_home, repo_id: str, folder) -> None:
    """Put a model folder into an HF cache in the hub layout: refs/main -> snapshots/<commit>/files."""
    repo = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(folder, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)


def test_offline_and_uncached_fails_clearly(tmp_path):
    result = run_download("some-org/not-cached", env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)})
    assert result.returncode == 1
    assert "some-org/not-cached is not in the local cache and HF_HUB_OFFLINE=1 forbids downloading it" in result.stderr


def test_unreachable_hub_fails_clearly(tmp_path):
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    result = run_download("some-org/not-cached", "--revision", "v1",
                          env={"HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path), "HF_ENDPOINT": endpoint})
    assert result.returncode == 1
    assert "could not reach the model hub to download some-org/not-cached at revision v1" in result.stderr


def test_already_cached_model_is_found_without_network(tmp_path, tiny_qwen3):
    cache_model(tmp_path, "test-org/tiny-qwen3", tiny_qwen3)
    result = run_download("test-org/tiny-qwen3", env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    snapshot = tmp_path / "hub" / "models--test-org--tiny-qwen3" / "snapshots" / COMMIT
    assert str(snapshot) in result.stdout
    assert "vllm-mlx serve test-org/tiny-qwen3" in result.stdout


def test_local_folder_needs_no_download(tiny_qwen3):
    result = run_download(str(tiny_qwen3), env={"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0 and "is a local folder already" in result.stdout


def test_help_lists_options():
    result = subprocess.run([VLLM_MLX, "download", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for option in ("--revision", "--local-dir", "--all-files"):
        assert option in result.stdout


def test_download_from_a_hub_with_progress_then_serve_offline(tmp_path, tiny_qwen3):
    from fake_hub import COMMIT as HUB_COMMIT
    from fake_hub import FakeHub

    repo = tmp_path / "repo"
    shutil.copytree(tiny_qwen3, repo)
    (repo / "training-log.bin").write_bytes(b"\0" * 1000)  # not needed to serve: not fetched by default
    home = tmp_path / "home"
    with FakeHub("test-org/tiny", repo) as hub:
        env = {"HF_HUB_OFFLINE": "0", "HF_HOME": str(home), "HF_ENDPOINT": hub.url}
        result = run_download("test-org/tiny", env=env)
        assert result.returncode == 0, result.stderr
        assert "Fetching" in result.stderr and "100%" in result.stderr  # the progress bar
        snapshot = home / "hub" / "models--test-org--tiny" / "snapshots" / HUB_COMMIT
        assert str(snapshot) in result.stdout
        assert (snapshot / "model.safetensors").read_bytes() == (repo / "model.safetensors").read_bytes()
        assert not (snapshot / "training-log.bin").exists()

        local = tmp_path / "local"
        result = run_download("test-org/tiny", "--local-dir", str(local), "--all-files", env=env)
        assert result.returncode == 0, result.stderr
        assert (local / "training-log.bin").exists() and f"vllm-mlx serve {local}" in result.stdout

        result = run_download("test-org/no-such-model", env=env)
        assert result.returncode == 1 and "no model repository 'test-org/no-such-model'" in result.stderr
    # Downloaded once, found again with the network forbidden.
    result = run_download("test-org/tiny", env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(home)})
    assert result.returncode == 0 and str(snapshot) in result.stdout
