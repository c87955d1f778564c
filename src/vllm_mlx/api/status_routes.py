"""Operator status routes (the ones users of vllm-mlx 0.2.x call), and the memory guardrail's wiring.

* ``GET /v1/status`` — uptime, engine steps, running / waiting / prefilling, token totals, memory
  (process, MLX, the guardrail's last reading), prefix-cache stats, and the running requests with
  their ids, tokens and tokens/s (the same entries as ``GET /v1/requests``).
* ``GET /health/diagnostics`` — checks of the served model: its chat template renders, it has EOS
  tokens, its weights' dtypes, the engine is alive and not stalled, memory against the guardrail's
  thresholds, the batch-divergence monitor; ``status`` healthy / degraded / unhealthy (503 when
  unhealthy), with the version.
* ``DELETE /v1/cache`` — clears the prefix cache (as ``POST /v1/cache/clear``).

Behind ``--api-key`` like every route but ``/``, ``/ui`` and ``/health``.
"""

from __future__ import annotations

import time
from collections import Counter

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse

from .. import __version__
from ..platform import process_memory
from .memory_guard import MemoryGuard, RejectNewMiddleware
from .request_routes import loaded_servings, running_requests

router = APIRouter()

ENGINE_COUNTERS = ("running", "waiting", "prefilling", "batch_rows", "steps", "requests_finished",
                   "requests_aborted", "requests_failed", "prompt_tokens", "generation_tokens")


def install_status_routes(app: FastAPI, config) -> MemoryGuard:
    """The routes above and the memory guardrail (its monitor thread is started and stopped by the app's
    lifespan; reject-new's check sits in front of the generation routes)."""
    app.state.started_at = time.time()
    guard = app.state.memory_guard = MemoryGuard(config, lambda: _servings_of(app))
    if config.memory_action == "reject-new":
        app.add_middleware(RejectNewMiddleware, guard=guard)
    app.include_router(router)
    return guard


def _servings_of(app: FastAPI) -> list:
    return app.state.model_registry.loaded_servings()  # set before the lifespan starts any thread


def _guard(raw: Request) -> MemoryGuard | None:
    return getattr(raw.app.state, "memory_guard", None)


@router.get("/v1/status")
async def status(raw: Request):
    servings = loaded_servings(raw)
    models = []
    totals = Counter()
    for state in servings:
        stats = state.engine.stats
        counters = {k: getattr(stats, k) for k in ENGINE_COUNTERS}
        totals.update(counters)
        models.append({"model": state.model_name, "state": stats.state, **counters,
                       "max_num_seqs": stats.max_num_seqs, "max_model_len": state.max_model_len,
                       "cache": {"prefix": stats.prefix_cache, "vision": stats.vision_cache},
                       "engine_process_memory": stats.memory})
    started = getattr(raw.app.state, "started_at", time.time())
    guard = _guard(raw)
    return JSONResponse({
        "object": "status",
        "version": __version__,
        "uptime_s": round(time.time() - started, 3),
        "started_at": int(started),
        "models": models,
        "totals": {k: totals.get(k, 0) for k in ENGINE_COUNTERS},
        "memory": {**process_memory(), "guard": guard.snapshot() if guard else None},
        "requests": running_requests(raw),
    })


@router.get("/health/diagnostics")
async def diagnostics(raw: Request):
    checks = [check for state in loaded_servings(raw) for check in _model_checks(state)]
    if not checks:
        waiting = not raw.app.state.model_registry.single  # --models load on their first request
        checks.append(("engine", "ok" if waiting else "fail",
                       "no model loaded yet (models load on their first request)" if waiting
                       else "the model is not loaded"))
    watchdog = getattr(raw.app.state, "watchdog", None)
    if watchdog is not None:
        watchdog.check()
        problem = watchdog.problem()
        checks.append(("watchdog", "fail" if problem else "ok", problem or "engine steps are moving"))
    guard = _guard(raw)
    if guard is not None and guard.enabled:
        guard.read()
        level = {"ok": "ok", "warn": "warn", "limit": "fail" if guard.action == "reject-new" else "warn"}[guard.level]
        checks.append(("memory", level, f"{guard.percent:.2f}% of the machine's memory in use (warn at "
                                        f"{guard.warn_pct:g}%, limit {guard.limit_pct:g}%, action {guard.action})"))
    monitors = getattr(raw.app.state, "divergence_monitors", None)
    if monitors is not None and monitors.enabled:
        snapshot = monitors.snapshot()
        statuses = snapshot.values() if "probes" not in snapshot else [snapshot]
        diverged = [s for s in statuses if isinstance(s, dict) and (s.get("serialized") or (
            s.get("agreement") is not None and s["agreement"] < s.get("threshold", 1.0)))]
        checks.append(("batch_invariance", "warn" if diverged else "ok",
                       "greedy output differs between serial and batched runs" if diverged
                       else "serial and batched greedy outputs agree"))
    results = {name: {"status": level, "detail": detail} for name, level, detail in checks}
    levels = {level for _, level, _ in checks}
    overall = "unhealthy" if "fail" in levels else "degraded" if "warn" in levels else "healthy"
    return JSONResponse({"status": overall, "version": __version__, "checks": results,
                         "memory": process_memory()}, status_code=503 if overall == "unhealthy" else 200)


def _model_checks(state) -> list[tuple[str, str, str]]:
    """(check name, ok / warn / fail, detail) for one served model."""
    prefix = f"{state.model_name}: "
    engine = state.engine.engine
    out = [("engine", "ok" if engine.alive else "fail", prefix + ("running" if engine.alive else "not running"))]
    try:
        text = state.tokenizer.apply_chat_template([{"role": "user", "content": "ping"}],
                                                   add_generation_prompt=True, tokenize=False)
        out.append(("chat_template", "ok" if "ping" in text else "warn",
                    prefix + (f"renders ({len(text)} characters)" if "ping" in text
                              else "renders, but without the message text")))
    except Exception as exc:
        out.append(("chat_template", "fail", prefix + f"does not render: {type(exc).__name__}: {exc}"))
    eos = sorted(getattr(state.tokenizer, "eos_token_ids", None) or ())
    out.append(("eos", "ok" if eos else "fail", prefix + (f"EOS token ids {eos}" if eos
                                                          else "no EOS token: generations end only at max_tokens")))
    out.append(("dtype", "ok", prefix + _dtypes(state)))
    return out


def _dtypes(state) -> str:
    loaded = getattr(state.engine, "loaded", None)
    counts = getattr(loaded, "weight_dtypes", None)  # --engine-process: counted in the engine process
    model = getattr(loaded, "model", None)
    if counts is None and model is None:
        return "unknown"
    if counts is None:
        from mlx.utils import tree_flatten

        counts = Counter(str(v.dtype).removeprefix("mlx.core.") for _, v in tree_flatten(model.parameters()))
    counts = Counter(counts)
    return "weights " + ", ".join(f"{dtype} ({n} arrays)" for dtype, n in counts.most_common())
