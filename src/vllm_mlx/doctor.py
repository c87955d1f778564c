"""`vllm-mlx doctor [MODEL] [--json]`: what this machine offers MLX, and whether a model can be served.

Each check is ok, warn or fail with one line of detail; any fail makes the exit status 1. Nothing is
downloaded and no weights are loaded: a model is checked from its files.
"""

from __future__ import annotations

import importlib
import json
import platform
import sys
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

PACKAGES = ("vllm-mlx", "mlx", "mlx-lm", "mlx-metal", "mlx-vlm", "mlx-embeddings", "mlx-audio", "transformers",
            "tokenizers", "huggingface_hub", "fastapi", "uvicorn", "llguidance")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tiktoken.model")
GiB = 1 << 30


@dataclass
class Check:
    name: str
    status: str  # ok | warn | fail | info
    detail: str


def _versions() -> dict[str, str | None]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def machine_checks() -> tuple[list[Check], dict]:
    from . import BLAS_STATUS
    from .platform import available_memory_bytes, detect_backend, device_memory_bytes

    checks = [Check("platform", "info", f"{platform.system()} {platform.release()} {platform.machine()}; "
                                        f"Python {platform.python_version()}")]
    facts: dict = {"platform": platform.platform(), "versions": _versions()}
    try:
        import mlx.core as mx

        backend = detect_backend(BLAS_STATUS)
        device = str(mx.default_device())
        facts["backend"] = {"device": backend.device, "metal": backend.metal, "cuda": backend.cuda,
                            "mlx_default_device": device, "compute_dtype": backend.compute_dtype}
        kind = "Metal GPU" if backend.metal else ("CUDA GPU" if backend.cuda else "CPU")
        checks.append(Check("backend", "ok", f"MLX {mx.__version__} on {kind} (default device {device}); "
                                             f"unquantized weights computed in {backend.compute_dtype}"))
    except Exception as exc:  # mlx missing or broken
        checks.append(Check("backend", "fail", f"MLX cannot start: {type(exc).__name__}: {exc}"))
        return checks, facts
    blas_needed = backend.device == "cpu" and sys.platform.startswith("linux")
    facts["blas"] = {"library": BLAS_STATUS.path, "reason": BLAS_STATUS.reason}
    checks.append(Check("blas", "ok" if BLAS_STATUS.path or not blas_needed else "warn", BLAS_STATUS.reason))
    total, free = device_memory_bytes(), available_memory_bytes()
    facts["memory"] = {"device_bytes": total, "available_bytes": free}
    checks.append(Check("memory", "ok" if free > 2 * GiB else "warn",
                        f"{free / GiB:.1f} GiB available of {total / GiB:.1f} GiB"
                        + (" (Metal working set)" if backend.metal else "")))
    versions = facts["versions"]
    checks.append(Check("versions", "info", ", ".join(f"{k} {v}" for k, v in versions.items() if v)))
    missing = [k for k in ("mlx-vlm", "mlx-embeddings", "mlx-audio") if not versions.get(k)]
    if missing:
        checks.append(Check("optional extras", "info", "not installed: " + ", ".join(missing)
                            + " (vision / embeddings / audio features need them)"))
    return checks, facts


def _architecture(config: dict) -> tuple[str, str]:
    """(status, detail) for whether mlx-lm has a model class for this config."""
    from mlx_lm.utils import MODEL_REMAPPING

    model_type = config.get("model_type")
    if not model_type:
        return "fail", "config.json has no model_type"
    module = MODEL_REMAPPING.get(model_type, model_type)
    try:
        importlib.import_module(f"mlx_lm.models.{module}")
    except ImportError:
        vision = "vision_config" in config
        return ("warn" if vision else "fail",
                f"model_type {model_type!r} is not supported by mlx-lm"
                + (" (a vision model: it needs mlx-vlm)" if vision else ""))
    return "ok", f"model_type {model_type!r} -> mlx_lm.models.{module}"


def model_checks(model: str, trust_remote_code: bool, available: int | None) -> tuple[list[Check], dict]:
    from .models.context import declared_context_length
    from .models.loader import ModelNotFoundError, resolve_model_path

    checks: list[Check] = []
    try:
        path = resolve_model_path(model)
    except ModelNotFoundError as exc:
        return [Check("model files", "fail", str(exc))], {"model": model}
    facts: dict = {"model": model, "path": str(path)}
    checks.append(Check("model files", "ok", f"found at {path}"))
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        checks.append(Check("config", "fail", f"config.json unreadable: {exc}"))
        return checks, facts
    facts["model_type"] = config.get("model_type")
    custom = config.get("model_file")
    if custom:
        checks.append(Check("architecture", "ok" if trust_remote_code else "fail",
                            f"custom model file {custom}" + ("" if trust_remote_code else
                                                             ": serve (and check) with --trust-remote-code")))
    else:
        checks.append(Check("architecture", *_architecture(config)))
    quant = config.get("quantization") or config.get("quantization_config")
    if quant:
        checks.append(Check("quantization", "info", f"{quant.get('bits', '?')}-bit, group size "
                                                    f"{quant.get('group_size', '?')}"))
    context = declared_context_length(config)
    facts["context_length"] = context
    tok = [f for f in TOKENIZER_FILES if (path / f).exists()]
    checks.append(Check("tokenizer", "ok" if tok else "fail",
                        f"{', '.join(tok)}" if tok else "no tokenizer file (tokenizer.json, tokenizer.model, ...)"))
    checks.append(_chat_template(path))
    weights = sorted(path.glob("*.safetensors"))
    size = sum(w.stat().st_size for w in weights)
    facts["weights_bytes"] = size
    if not weights:
        checks.append(Check("weights", "fail", "no *.safetensors files"))
    else:
        fits = available is None or size < 0.8 * available
        checks.append(Check("weights", "ok" if fits else "warn",
                            f"{len(weights)} file(s), {size / GiB:.2f} GiB"
                            + ("" if available is None else f" vs {available / GiB:.1f} GiB available")
                            + ("" if fits else ": the model may not fit beside its KV cache")))
    if context:
        checks.append(Check("context", "info", f"{context} tokens declared by config.json"))
    return checks, facts


def _chat_template(path: Path) -> Check:
    if (path / "chat_template.jinja").exists() or (path / "chat_template.json").exists():
        return Check("chat template", "ok", "separate chat template file")
    try:
        data = json.loads((path / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        return Check("chat template", "warn", "no tokenizer_config.json: chat requests have no template")
    if data.get("chat_template"):
        return Check("chat template", "ok", "in tokenizer_config.json")
    return Check("chat template", "warn", "none: chat requests (/v1/chat/completions, /v1/messages, "
                                          "/v1/responses) will be refused; /v1/completions works")


def run_doctor(model: str | None, as_json: bool = False, trust_remote_code: bool = False) -> int:
    checks, facts = machine_checks()
    if model:
        available = (facts.get("memory") or {}).get("available_bytes")
        more, model_facts = model_checks(model, trust_remote_code, available)
        checks += more
        facts["model"] = model_facts
    failed = any(c.status == "fail" for c in checks)
    if as_json:
        print(json.dumps({"ok": not failed, "checks": [asdict(c) for c in checks], **facts}, indent=2))
    else:
        for c in checks:
            print(f"[{c.status.upper():4}] {c.name}: {c.detail}")
        print("\n" + ("some checks FAILED" if failed else "all checks passed"))
    return 1 if failed else 0
