"""How a missing optional extra is named: from a clone, the clone's install command; from an installed
wheel, the extra's own pinned packages for this interpreter's pip."""

from __future__ import annotations

import sys

import pytest

from vllm_mlx import extras


def test_hint_in_a_clone_names_the_dev_script():
    assert extras.source_checkout() is not None  # the tests run from the clone
    for extra in extras.EXTRAS:
        assert extras.install_hint(extra).startswith("scripts/dev.sh install full")
    with pytest.raises(ValueError):
        extras.install_hint("nonsense")


def test_hint_of_an_installed_wheel_names_the_extras_packages(monkeypatch):
    monkeypatch.setattr(extras, "source_checkout", lambda: None)
    declared = ['fastapi>=0.115', 'mlx-embeddings==0.1.0; extra == "embeddings"',
                'mlx-vlm==0.7.10; extra == "vision"', 'pillow>=10; extra == "vision"',
                'matplotlib>=3.9 ; extra == "bench"']
    monkeypatch.setattr("importlib.metadata.requires", lambda name: declared)
    assert extras.extra_requirements("vision") == ["mlx-vlm==0.7.10", "pillow>=10"]
    hint = extras.install_hint("embeddings")
    assert hint.startswith(f"{sys.executable} -m pip install mlx-embeddings==0.1.0")
    assert "pipx inject vllm-mlx mlx-embeddings==0.1.0" in hint
    assert "'matplotlib>=3.9'" in extras.install_hint("bench")  # quoted for the shell


def test_pyproject_extras_are_the_documented_ones():
    import tomllib

    with open(extras.source_checkout() / "pyproject.toml", "rb") as f:
        optional = tomllib.load(f)["project"]["optional-dependencies"]
    assert set(optional) == {*extras.EXTRAS, "test"}


def test_vision_model_without_the_extra_names_it_and_text_only(monkeypatch, tmp_path):
    from vllm_mlx.models.vision_loader import ServingMode, load_vision_model

    monkeypatch.setitem(sys.modules, "mlx_vlm", None)  # import mlx_vlm -> ImportError
    with pytest.raises(RuntimeError) as err:
        load_vision_model(tmp_path / "qwen2-vl", mode=ServingMode(True, "its config.json has a vision_config"))
    message = str(err.value)
    assert "'vision' extra" in message and "scripts/dev.sh install full" in message and "--text-only" in message
    assert "vision_config" in message
