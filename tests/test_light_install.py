"""The light install serves: every package the server's code imports (outside the test helpers) is a
base dependency or one that base dependencies pull in, unless it belongs to an optional extra; and
requirements-serve.lock pins exactly what requirements.lock pins for the packages both hold."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, packages_distributions, requires
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "vllm_mlx"
TEST_HELPERS = {"testing"}  # src/vllm_mlx/testing: model builders for the tests (and the demo model's builder)


def _pyproject() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]


def _closure(reqs: list[str]) -> set[str]:
    """Distributions these requirements install on this platform, transitively (no extras but those named)."""
    seen: set[str] = set()
    todo = [(Requirement(r), "") for r in reqs]
    while todo:
        req, extra = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": extra}):
            continue
        name = canonicalize_name(req.name)
        wanted = [(name, "")] + [(name, e) for e in req.extras]
        for key in wanted:
            if key in seen:
                continue
            seen.add(key)
            try:
                deps = requires(req.name) or []
            except PackageNotFoundError:
                continue
            todo += [(Requirement(d), key[1]) for d in deps]
    return {name for name, _ in seen}


def _imports() -> dict[str, list[str]]:
    """Top-level module names imported anywhere in the server's code -> the files importing them."""
    found: dict[str, list[str]] = {}
    for path in SRC.rglob("*.py"):
        if TEST_HELPERS & set(path.relative_to(SRC).parts):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], []).append(str(path.relative_to(ROOT)))
    return found


def test_server_code_imports_only_base_dependencies_or_extras():
    project = _pyproject()
    base = _closure(project["dependencies"])
    optional = _closure([r for extra, reqs in project["optional-dependencies"].items() if extra != "test"
                         for r in reqs]) - base
    dists = packages_distributions()
    problems = []
    for module, files in sorted(_imports().items()):
        if module in sys.stdlib_module_names or module == "vllm_mlx" or module.startswith("_"):
            continue
        owners = {canonicalize_name(d) for d in dists.get(module, [])}
        if not owners:
            problems.append(f"{module} (imported by {files[0]}) is not installed at all")
        elif not owners & base and not owners & optional:
            problems.append(f"{module} ({', '.join(sorted(owners))}; imported by {files[0]}) is in no base "
                            f"dependency's closure and no extra: a light install would fail on it")
    assert not problems, "\n".join(problems)


def _pins(lock: str) -> dict[str, set[str]]:
    pins: dict[str, set[str]] = {}
    for line in (ROOT / lock).read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)==([^\s;\\]+)", line)
        if m:
            pins.setdefault(canonicalize_name(m.group(1)), set()).add(m.group(2))
    return pins


def test_serve_lock_is_the_base_part_of_the_full_lock():
    serve, full = _pins("requirements-serve.lock"), _pins("requirements.lock")
    assert set(serve) <= set(full)
    assert {name: v for name, v in serve.items() if full[name] != v} == {}
    assert _closure(_pyproject()["dependencies"]) - {"vllm-mlx"} <= set(serve) | {"mlx-metal"}
    heavy = {"torch", "opencv-python", "pyarrow", "pandas", "scipy", "datasets", "matplotlib", "mlx-vlm"}
    assert not heavy & set(serve)


def test_version_flag_prints_the_project_version():
    import subprocess

    vllm_mlx = str(Path(sys.executable).with_name("vllm-mlx"))
    out = subprocess.run([vllm_mlx, "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == f"vllm-mlx {_pyproject()['version']}"
