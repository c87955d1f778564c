"""The GPU kit's flow stays runnable against this checkout (docs/benchmarks/gpu.md): the speculative
driver builds its model through the test builders with the kit's parameters, and where the kit is
present, scripts/gpu-kit.sh still finds the one import of its driver it rewrites."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KIT = ROOT.parent / "shared" / "gpu" / "gpu_bench.py"


def test_the_speculative_driver_builds_its_model(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, "benchmarks/gpu_speculative.py", "--small", "--models", str(tmp_path),
                           "--skip", "ngram", "draft", "mtp", "rollback"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "build-small-spec: rc=0" in done.stdout
    config = json.loads((tmp_path / "small-spec" / "config.json").read_text())
    assert config["num_hidden_layers"] == 4 and config["hidden_size"] == 128
    assert json.loads((tmp_path / "out" / "gpu_speculative.json").read_text())["small"] is True


@pytest.mark.skipif(not KIT.exists(), reason="the GPU kit (../shared/gpu) is not on this machine")
def test_the_kit_driver_imports_the_builders_from_where_they_live_once_rewritten():
    """The rewrite ``gpu-kit.sh`` applies to the copy of the kit's driver (its sed expression, run by
    Python's ``re``) leaves it importing the builders from ``vllm_mlx_testing`` and nothing from the
    module they left."""
    script = (ROOT / "scripts" / "gpu-kit.sh").read_text()
    found = re.search(r"sed -i 's/(.+?)/(.+?)/' \.gpu/gpu_bench\.py", script)
    assert found, "gpu-kit.sh no longer rewrites the driver's import"
    pattern, replacement = found.group(1), found.group(2)
    driver = re.sub(pattern, replacement, KIT.read_text())
    assert re.search(r"^from vllm_mlx_testing import build_tiny_model$", driver, re.M)
    assert "vllm_mlx.testing" not in driver
