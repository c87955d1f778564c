"""The wheel: the server and its demo model, and none of the test fixtures.

The fixtures live in ``src/vllm_mlx_testing`` (importable in development through the editable
install); the wheel holds ``src/vllm_mlx`` only. The build uses the installed backend
(``hatchling``, pinned in requirements.lock) without build isolation, so it needs no index.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO_FILES = {"__init__.py", "builder.py", "chat_template.py", "demo_model.py", "tokenizer.py"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    cmd = [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-w", str(out), "-q"]
    if importlib.util.find_spec("hatchling") is not None:
        cmd.append("--no-build-isolation")  # the backend from requirements.lock: works offline
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    (built,) = out.glob("vllm_mlx-*.whl")
    return built


def test_wheel_has_the_demo_model_and_no_fixtures(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"vllm_mlx"}, top
    assert not [n for n in names if "testing/" in n or "vllm_mlx_testing" in n]
    assert not [n for n in names if "scripted" in n.lower()]
    demo = {n.removeprefix("vllm_mlx/models/demo/") for n in names if n.startswith("vllm_mlx/models/demo/")}
    assert DEMO_FILES <= demo, demo
    assert "vllm_mlx/api/app.py" in names and "vllm_mlx/cli.py" in names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "vllm-mlx = vllm_mlx.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


# Runs with the installed wheel first on sys.path and no source tree (a folder holding vllm_mlx or
# vllm_mlx_testing) at all: what a user of the wheel has.
WHEEL_ONLY = r"""
import importlib.util, json, sys
from pathlib import Path

target, demo_cache, scripted = sys.argv[1:4]
sys.path[:] = [target] + [p for p in sys.path if p and not (Path(p) / "vllm_mlx").is_dir()
                          and not (Path(p) / "vllm_mlx_testing").is_dir()]
import mlx_lm
import vllm_mlx
from vllm_mlx.models.demo import DEMO_MODEL_NAME, ensure_demo_model
from vllm_mlx.models.loader import load_model

facts = {"vllm_mlx": vllm_mlx.__file__, "fixtures_importable": importlib.util.find_spec("vllm_mlx_testing") is not None}
path = ensure_demo_model(Path(demo_cache))  # what `serve` without a model loads, built from the wheel alone
demo = load_model(str(path))
out = list(mlx_lm.stream_generate(demo.model, demo.tokenizer, "Hello", max_tokens=4))
facts["demo"] = [DEMO_MODEL_NAME, path.name, len(out)]
# A fixture folder still loads: its model file finds the fixtures in the checkout that built it.
loaded = load_model(scripted, trust_remote_code=True)
prompt = loaded.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True)
facts["scripted"] = "".join(r.text for r in mlx_lm.stream_generate(loaded.model, loaded.tokenizer, prompt, max_tokens=40))
facts["scripted_from"] = sys.modules["vllm_mlx_testing"].__file__
facts["demo_from"] = sys.modules["vllm_mlx.models.demo"].__file__
print(json.dumps(facts))
"""


@pytest.mark.slow
def test_installed_wheel_serves_the_demo_model_alone(wheel, tmp_path):
    from vllm_mlx_testing import build_scripted_model

    target = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                           "--target", str(target), str(wheel)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    scripted = build_scripted_model(tmp_path / "scripted", default_reply="Scripted, from the checkout.")
    done = subprocess.run([sys.executable, "-c", WHEEL_ONLY, str(target), str(tmp_path / "cache"), str(scripted)],
                          capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    facts = json.loads(done.stdout.strip().splitlines()[-1])
    assert facts["vllm_mlx"].startswith(str(target))
    assert not facts["fixtures_importable"]
    assert facts["demo"] == ["vllm-mlx-demo", "demo-model-v1", 4]
    assert facts["demo_from"].startswith(str(target))
    assert facts["scripted"] == "Scripted, from the checkout."
    assert facts["scripted_from"] == str(ROOT / "src" / "vllm_mlx_testing" / "__init__.py")
