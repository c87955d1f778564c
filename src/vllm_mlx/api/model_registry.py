"""The served models by name: every route, /v1/models, /health, /metrics, shutdown and the monitors
read them here. A single model is a registry of one.

``--models`` (multi-model serving): an allow-list of named models, loaded on first request, unloaded
when idle. Each loaded model has its own engine (thread, scheduler, prefix cache). Only the
configured names are served: a request naming any other model gets 404 ``model_not_found`` and never
makes the server fetch or load anything. ``ttl`` unloads a model after that many idle seconds; a
memory bound on the loaded weights unloads the least recently used idle models to make room, and
answers 503 with Retry-After when the models in use leave no room.

``serve MODEL`` (one model): the registry holds one *pinned* entry. What differs, and only here:
it is loaded at startup (a failed load stops the server), never unloaded before shutdown and not
reloaded when its engine dies (/health answers 503 instead); every request reaches it whatever model
it names (``--strict-model-id`` refuses other names); /health and the divergence monitor report it
at the top level, as single-model serving always has.

A model is *in use* while a request holds it (from routing until its response has been sent,
streams included: :class:`ModelLeaseMiddleware`) or while its engine has generations in flight.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from fastapi import Request

from ..config import ServerConfig
from ..engine.async_engine import AsyncEngine
from ..engine.config import EngineStats
from ..models.loader import ModelNotFoundError, resolve_model_path
from ..models.model_specs import ModelSpec, ModelSpecError, parse_model_specs
from ..platform import process_memory
from .errors import APIError
from ..serving.model_setup import build_engine, build_serving, resolve_model
from ..serving.state import ServingState
from ..serving.warmup import warm_up

logger = logging.getLogger(__name__)

RETRY_AFTER_S = 5
LEASES = "model_leases"  # request.state attribute: the entries a request holds


def weight_file_bytes(source: str) -> int:
    """Estimated weight bytes before the first load: the size of the safetensors files of the folder,
    or of the cached snapshot of a repo id (0 when not known yet; measured after the first load)."""
    folder = Path(source).expanduser()
    if not folder.is_dir():
        try:
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(source, local_files_only=True))
        except Exception:  # not cached (yet): nothing to measure, and nothing is fetched here
            return 0
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


@dataclass
class ModelEntry:
    spec: ModelSpec
    build: Callable[[], AsyncEngine]  # a new, unstarted engine for the model
    pinned: bool = False  # the single model: loaded at startup, kept until shutdown, never reloaded
    engine: AsyncEngine | None = None
    serving: ServingState | None = None
    loading: bool = False
    weight_bytes: int = 0  # measured after a load, estimated from the files before
    last_used: float = field(default_factory=time.monotonic)
    leases: int = 0  # requests holding the model
    loads: int = 0
    unloads: int = 0
    last_error: str | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def loaded(self) -> bool:
        return self.serving is not None

    @property
    def in_use(self) -> bool:
        return self.leases > 0 or (self.engine is not None and self.engine.in_flight > 0)

    def state(self) -> str:
        return "loaded" if self.loaded else ("loading" if self.loading else "unloaded")


class ModelRegistry:
    def __init__(self, config: ServerConfig, entries: list[ModelEntry], single: bool = False):
        self.config = config
        self.single = single  # one model (``serve MODEL``), not a ``--models`` list
        self.metrics: Any = None  # attached to every engine (TTFT / inter-token histograms)
        self.ttl = config.model_ttl
        self.memory_bound = None if config.models_memory_gb is None else int(config.models_memory_gb * 2**30)
        self.entries = {e.name: e for e in entries}
        self._by_name = {n: e for e in self.entries.values() for n in e.spec.names}  # aliases included
        self._lock = asyncio.Lock()  # loads and unloads, one at a time
        self._reaper: asyncio.Task | None = None
        self.on_loaded: Callable[[ModelEntry], Any] | None = None  # async hook after a load
        self.on_unloading: Callable[[ModelEntry], Any] | None = None

    @classmethod
    def from_config(cls, config: ServerConfig, group=None) -> ModelRegistry:
        """The ``--models`` list, or the one model (``group``: the mx.distributed group of a
        --distributed job, this process being rank 0). Fails fast, before any MLX work, on a model
        that is not there."""
        if config.models:
            for what, given in (("a single model", config.model), ("served model names", config.served_model_names),
                                ("warm prompts", config.warm_prompts)):
                if given:
                    raise ModelSpecError(f"{what} cannot be combined with a models list; give names and aliases "
                                         f"in the list (NAME,ALIAS=MODEL)")
            registry = cls(config, [ModelEntry(s, functools.partial(build_engine, config, s.source),
                                               weight_bytes=weight_file_bytes(s.source))
                                    for s in parse_model_specs(config.models)])
            registry.check_sources()
            return registry
        source, default_name = resolve_model(config)
        names = config.served_model_names or (default_name,)
        path = resolve_model_path(source)  # fails fast, with what is missing
        if config.model is None:
            logger.warning("Serving the built-in DEMO model '%s' (random weights): it produces nonsense text. "
                           "Pass a model folder or Hugging Face repo id to serve a real model.", names[0])
        spec = ModelSpec(names[0], config.model or "demo", tuple(names[1:]))
        return cls(config, [ModelEntry(spec, functools.partial(build_engine, config, path, group), pinned=True)],
                   single=True)

    def check_sources(self) -> None:
        """Fail at startup, before any MLX work, on a configured local folder that is not a model."""
        for spec in (e.spec for e in self.entries.values()):
            local = Path(spec.source).expanduser()
            if spec.source.startswith((".", "/", "~")) or local.exists():
                if not (local / "config.json").exists():
                    raise ModelNotFoundError(f"model {spec.name!r}: {spec.source} is not a model folder "
                                             f"(no config.json)")

    # -- routing -----------------------------------------------------------------------
    def entry(self, name: str | None) -> ModelEntry:
        if self.single:  # any name reaches the one model; ServingState applies --strict-model-id
            return next(iter(self.entries.values()))
        entry = self._by_name.get(name or "")
        if not name:
            raise APIError(400, f"name the model: this server serves {', '.join(repr(n) for n in self._by_name)}",
                           param="model")
        if entry is None:
            raise APIError(404, f"The model '{name}' does not exist; this server serves "
                           f"{', '.join(repr(n) for n in self._by_name)}", param="model", code="model_not_found")
        return entry

    def names(self) -> tuple[str, ...]:
        """Every name a chat model is served under (aliases included)."""
        return tuple(self._by_name)

    async def serving(self, name: str | None, request: Request | None = None) -> ServingState:
        """The serving state of the named model, loaded if needed; held by ``request`` until its
        response has been sent (see :class:`ModelLeaseMiddleware`)."""
        entry = self.entry(name)
        if entry.pinned:  # loaded at startup; not reloaded (a dead engine turns /health 503)
            if entry.serving is None:
                raise APIError(503, "the model is still loading")
            return entry.serving
        entry.leases += 1  # held from now on, so no unload can race with this request
        try:
            if not self._ready(entry):
                # Shielded: a request cancelled meanwhile must not leave a half-registered engine behind.
                await asyncio.shield(self._load_once(entry))
        except BaseException:
            entry.leases -= 1
            raise
        entry.last_used = time.monotonic()
        held = getattr(request.state, LEASES, None) if request is not None else None
        if held is None:
            entry.leases -= 1
        else:
            held.append(entry)
        return entry.serving

    async def _load_once(self, entry: ModelEntry) -> None:
        async with self._lock:
            if not self._ready(entry):
                await self._load(entry)

    @staticmethod
    def _ready(entry: ModelEntry) -> bool:
        return entry.serving is not None and entry.engine is not None and entry.engine.engine.alive

    # -- loading and unloading (under the lock) ------------------------------------------
    def loaded_bytes(self) -> int:
        return sum(e.weight_bytes for e in self.entries.values() if e.loaded)

    async def _make_room(self, entry: ModelEntry) -> None:
        if self.memory_bound is None:
            return
        if entry.weight_bytes > self.memory_bound:
            raise APIError(503, f"model '{entry.name}' needs {entry.weight_bytes / 2**30:.2f} GiB, more than the "
                           f"{self.memory_bound / 2**30:.2f} GiB bound on loaded models", code="model_too_large")
        while self.loaded_bytes() + entry.weight_bytes > self.memory_bound:
            idle = [e for e in self.entries.values() if e.loaded and not e.in_use and not e.pinned and e is not entry]
            if not idle:
                raise APIError(503, f"no room to load model '{entry.name}': the loaded models are in use; "
                               f"retry later", code="model_capacity", headers={"Retry-After": str(RETRY_AFTER_S)})
            victim = min(idle, key=lambda e: e.last_used)
            logger.info("unloading model %s (least recently used) to make room for %s", victim.name, entry.name)
            await self._unload(victim)

    async def _load(self, entry: ModelEntry) -> None:
        if entry.engine is not None:  # its engine thread died: clear it before loading again
            await self._unload(entry)
        await self._make_room(entry)
        entry.loading = True
        started = time.monotonic()
        logger.info("loading model %s from %s", entry.name, entry.spec.source)
        engine = entry.build()
        engine.metrics = self.metrics
        try:
            await asyncio.to_thread(engine.start, asyncio.get_running_loop())
            serving = build_serving(self.config, engine, entry.spec.names,
                                    strict_model_id=None if self.single else True)
        except Exception as exc:
            await asyncio.to_thread(engine.shutdown)
            entry.last_error = f"{type(exc).__name__}: {exc}"
            if entry.pinned:  # the server cannot start without it
                raise
            logger.exception("could not load model %s", entry.name)
            raise APIError(500, f"could not load model '{entry.name}': {exc}", code="model_load_failed") from exc
        finally:
            entry.loading = False
        entry.engine, entry.serving, entry.last_error = engine, serving, None
        entry.weight_bytes = getattr(engine.loaded, "weight_bytes", entry.weight_bytes)
        entry.loads += 1
        entry.last_used = time.monotonic()
        logger.info("model %s loaded from %s; serving as %s; context %d tokens; %.1f MiB of weights; "
                    "engine ready in %.1f s", entry.name, engine.loaded.path, ", ".join(entry.spec.names),
                    serving.max_model_len, entry.weight_bytes / 2**20, time.monotonic() - started)
        if self.on_loaded is not None:
            await self.on_loaded(entry)

    async def _unload(self, entry: ModelEntry) -> None:
        engine, entry.engine, entry.serving = entry.engine, None, None
        if engine is not None:
            entry.unloads += 1  # counted as it leaves service (its state reads "unloaded" from now on)
        if self.on_unloading is not None:
            await self.on_unloading(entry)
        if engine is not None:
            await asyncio.to_thread(_stop_engine, engine)
            logger.info("model %s unloaded", entry.name)

    # -- background: idle unload ----------------------------------------------------------
    async def start(self) -> None:
        for entry in self.entries.values():
            if entry.pinned:
                await self._load_once(entry)
                if self.config.warm_prompts:
                    await warm_up(entry.serving, self.config.warm_prompts)
        if self.config.preload_models:
            for entry in self.entries.values():
                try:
                    await self.serving(entry.name)
                except APIError as exc:
                    logger.warning("model %s not preloaded: %s", entry.name, exc.message)
        if self.ttl:
            self._reaper = asyncio.create_task(self._unload_idle_forever())

    async def _unload_idle_forever(self) -> None:
        period = min(max(self.ttl / 4, 0.1), 5.0)
        while True:
            await asyncio.sleep(period)
            try:
                await self.unload_idle()
            except Exception:
                logger.exception("idle-model check failed")

    async def unload_idle(self) -> None:
        now = time.monotonic()
        for entry in self.entries.values():
            if not entry.loaded or entry.pinned:
                continue
            if entry.in_use:
                entry.last_used = now
            elif now - entry.last_used > self.ttl:
                async with self._lock:
                    if entry.loaded and not entry.in_use and time.monotonic() - entry.last_used > self.ttl:
                        logger.info("model %s idle for %.0f s: unloading", entry.name, self.ttl)
                        await self._unload(entry)

    async def shutdown(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            await asyncio.gather(self._reaper, return_exceptions=True)
        for entry in self.entries.values():
            if entry.engine is not None:
                await self._unload(entry)

    def abort_all(self) -> None:
        for entry in self.entries.values():
            if entry.engine is not None:
                entry.engine.engine.abort_all()

    # -- reporting -------------------------------------------------------------------------
    def running_engines(self) -> list:
        """The engine threads of the loaded models (for the watchdog)."""
        return [e.engine.engine for e in self.entries.values() if e.engine is not None]

    def loaded_servings(self) -> list[ServingState]:
        return [e.serving for e in self.entries.values() if e.serving is not None]

    def healthy(self) -> bool:
        """False while a pinned model is not loaded or its engine has died (/health answers 503)."""
        return all(self._ready(e) for e in self.entries.values() if e.pinned)

    def problem(self) -> str | None:
        """Why a pinned model's engine is not serving, when it says (an engine process that died)."""
        engines = [e.engine.engine for e in self.entries.values() if e.pinned and e.engine is not None]
        return next((p for p in (getattr(e, "problem", None) for e in engines) if p), None)

    def combined_stats(self) -> EngineStats | None:
        """The engines' counters summed (for the /metrics engine gauges); one engine's stats as they are
        (prefix cache and vision cache included)."""
        engines = [e.engine for e in self.entries.values() if e.engine is not None and e.engine.engine.alive]
        if not engines:
            return None
        if len(engines) == 1:
            return engines[0].stats
        total = EngineStats(state="ready")
        for engine in engines:
            s = engine.stats
            for name in ("running", "waiting", "prefilling", "prompt_tokens", "generation_tokens"):
                setattr(total, name, getattr(total, name) + getattr(s, name))
        return total

    def snapshot(self) -> dict:
        now = time.monotonic()
        return {
            "ttl_s": self.ttl,
            "memory_bound_bytes": self.memory_bound,
            "loaded_bytes": self.loaded_bytes(),
            "active_memory_bytes": _active_memory(),  # held by MLX arrays now, all models together
            "models": [{
                "name": e.name, "aliases": list(e.spec.aliases), "source": e.spec.source, "state": e.state(), "in_use": e.in_use,
                "idle_s": round(now - e.last_used, 2), "weight_bytes": e.weight_bytes, "loads": e.loads,
                "unloads": e.unloads, "last_error": e.last_error,
                "engine": None if e.engine is None else {k: v for k, v in vars(e.engine.stats).items()},
            } for e in self.entries.values()],
        }

    def health(self) -> dict:
        """/health's model fields: the list of models; the single model also at the top level (its name,
        engine counters, admission and the process's memory)."""
        body: dict = {"models": self.snapshot()}
        serving = next(iter(self.entries.values())).serving if self.single else None
        if serving is not None:
            body["model"] = serving.model_name
            body["engine"] = asdict(serving.engine.stats)
            if serving.admission is not None:
                body["admission"] = serving.admission.stats()
            body["memory"] = process_memory()
        return body

    def model_cards(self) -> list[dict]:
        """Every served name, then each LoRA adapter as BASE:NAME (--lora)."""
        cards = [{"id": name, "root": e.name, "loaded": e.loaded,
                  "max_model_len": e.serving.max_model_len if e.serving else None}
                 for e in self.entries.values() for name in e.spec.names]
        return cards + [{"id": f"{e.name}:{adapter}", "root": e.name, "parent": e.name, "loaded": True,
                         "max_model_len": e.serving.max_model_len}
                        for e in self.entries.values() if e.serving is not None for adapter in e.serving.adapters]


def _active_memory() -> int | None:
    try:
        import mlx.core as mx

        return int(mx.get_active_memory())
    except Exception:  # reporting only
        return None


def _stop_engine(engine: AsyncEngine) -> None:
    """Stop the engine thread and let its arrays go (they are freed with the last reference)."""
    engine.shutdown()
    engine.engine.loaded = None
    gc.collect()
    try:
        import mlx.core as mx

        mx.clear_cache()
    except Exception:  # only returns cached buffers to the system; never worth failing an unload
        pass


async def serving_for(raw: Request, model: str | None) -> ServingState:
    """The serving state for a request's ``model``: the one model, or the named one of several."""
    registry: ModelRegistry = raw.app.state.model_registry
    return await registry.serving(model, raw)
