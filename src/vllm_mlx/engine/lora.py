"""LoRA adapters in mlx-lm's format, many at once in one batch (``--lora NAME=PATH``).

Every layer that any served adapter adapts is wrapped once around the model's own layer (plain or
quantized: :mod:`.lora_layers`), with a slot per resident adapter; the model runner builds each forward
inside :meth:`AdapterBank.selecting` (its rows' adapters), so rows of different adapters -- and rows of
none -- share one forward: prefill, decode, verify. Adapter folders are read by :mod:`.lora_files`.

Adapters take slots on first use (:meth:`AdapterBank.acquire`, as a request is admitted; the first
``--max-loras`` at startup). When all slots are taken, the least recently used adapter that no
scheduled row uses gives its slot up, and when every slot is in use the request waits in the queue.
"""

from __future__ import annotations

from collections import OrderedDict
from contextlib import contextmanager
from typing import Any, Iterator

import mlx.core as mx
import mlx.nn as nn

from .lora_files import CONFIG_FILE, AdapterError, AdapterFile, adapter_fingerprint, read_adapter
from .lora_layers import EXPERT_LAYERS, AdapterRouting, AdapterRows, MultiLoRAExperts, MultiLoRALinear, linear_dims


class AdapterBank:
    """The served adapters, their slots in the wrapped layers and which rows use which (engine thread)."""

    def __init__(self, model: nn.Module, adapters: list[AdapterFile], max_loras: int):
        self.adapters = {a.name: a for a in adapters}
        self.rows = AdapterRows()
        self.num_slots = min(max_loras, len(adapters)) + 1
        modules = dict(model.named_modules())
        rank = max(a.rank for a in adapters)
        for adapter in adapters:
            check_fits(adapter, modules)
        self.layers = wrap_layers(model, modules, sorted({p for a in adapters for p in a.shapes}), self.rows,
                                  self.num_slots, rank)
        mx.eval([w.arrays() for w in self.layers.values()])
        self.slot_of: OrderedDict[str, int] = OrderedDict()  # resident adapters, least recently used first
        self.loads = 0
        self._selected: tuple = ((), None, None)

    @property
    def namespaces(self) -> dict[str, bytes]:
        return {name: a.fingerprint for name, a in self.adapters.items()}

    def acquire(self, name: str, in_use: set[str]) -> bool:
        """Make ``name`` resident (loading it into a free slot, or the slot of the least recently used
        adapter not in ``in_use``); False when every slot is held by an adapter in use."""
        if name in self.slot_of:
            self.slot_of.move_to_end(name)
            return True
        taken = set(self.slot_of.values())
        free = [s for s in range(1, self.num_slots) if s not in taken]
        if free:
            slot = free[0]
        else:
            victim = next((n for n in self.slot_of if n not in in_use), None)
            if victim is None:
                return False
            slot = self.slot_of.pop(victim)
        self._load(self.adapters[name], slot)
        self.slot_of[name] = slot
        self._selected = ((), None, None)
        return True

    def _load(self, adapter: AdapterFile, slot: int) -> None:
        if adapter_fingerprint(adapter.path / CONFIG_FILE, adapter.weights) != adapter.fingerprint:  # stale cache
            raise AdapterError(f"LoRA adapter {adapter.name!r} changed on disk since the server started; restart "
                               f"it to serve the new weights")
        weights = mx.load(str(adapter.weights))
        for path, layer in self.layers.items():
            shape = adapter.shapes.get(path)  # (an expert layer's untouched siblings are zeroed too)
            if shape is None:
                layer.write(slot, None, None)
            elif shape.transposed:  # PEFT's (r, in) and (out, r)
                layer.write(slot, weights[shape.a_key].T, shape.scale * weights[shape.b_key].T)
            else:
                layer.write(slot, weights[shape.a_key], shape.scale * weights[shape.b_key])
        mx.eval([w.arrays() for w in self.layers.values()])
        self.loads += 1

    @contextmanager
    def selecting(self, names: list[str | None]) -> Iterator[None]:
        """Within the block, the forward being built gives row i the update of adapter ``names[i]``."""
        key = tuple(names)
        if key != self._selected[0]:
            slots = [0 if n is None else self.slot_of[n] for n in names]
            if not any(slots):
                single, per_row = None, None
            elif len(set(slots)) == 1:
                single, per_row = slots[0], None
            else:
                single, per_row = None, mx.array(slots, dtype=mx.uint32)
            self._selected = (key, single, per_row)
        _, self.rows.single, self.rows.slots = self._selected
        try:
            yield
        finally:
            self.rows.single = self.rows.slots = None

    def stats(self) -> dict:
        return {"adapters": sorted(self.adapters), "slots": self.num_slots - 1, "resident": list(self.slot_of),
                "loads": self.loads}


def check_fits(adapter: AdapterFile, modules: dict[str, nn.Module]) -> None:
    """An adapter whose layers this model lacks, or whose shapes differ, was made for another base model."""
    for path, shape in adapter.shapes.items():
        layer = modules.get(path)
        if layer is None:
            raise AdapterError(f"LoRA adapter {adapter.name!r} adapts {path!r}, which this model does not have: "
                               f"it was made for another base model")
        if shape.experts:
            if not isinstance(layer, EXPERT_LAYERS):
                raise AdapterError(f"LoRA adapter {adapter.name!r} adapts {path!r} as an expert layer; here it is a "
                                   f"{type(layer).__name__}: it was made for another base model")
            have = (layer.input_dims, layer.output_dims, layer.num_experts)
        elif isinstance(layer, (nn.Linear, nn.QuantizedLinear)):
            have = (*linear_dims(layer), 0)
        else:
            raise AdapterError(f"LoRA adapter {adapter.name!r} adapts {path!r}, a {type(layer).__name__}: only "
                               f"linear and expert layers are served")
        if have != (shape.in_dims, shape.out_dims, shape.experts):
            raise AdapterError(f"LoRA adapter {adapter.name!r} does not fit this model: {path} maps "
                               f"{have[0]} -> {have[1]} here{f' ({have[2]} experts)' if have[2] else ''}, the adapter "
                               f"{shape.in_dims} -> {shape.out_dims}; it was made for another base model")


def wrap_layers(model: nn.Module, modules: dict[str, nn.Module], paths: list[str], rows: AdapterRows,
                num_slots: int, rank: int) -> dict[str, Any]:
    """Wrap the adapted layers in place; returns the wrappers by path. An adapted expert layer's whole
    mixture-of-experts block is wrapped (:class:`AdapterRouting`), with every expert layer in it."""
    wrapped: dict[str, Any] = {}
    replace: dict[str, nn.Module] = {}
    for path in paths:
        if path in wrapped:
            continue
        if not isinstance(modules[path], EXPERT_LAYERS):
            wrapped[path] = replace[path] = MultiLoRALinear(modules[path], rows, num_slots, rank)
            continue
        block_path, _, _ = path.rpartition(".")
        block = modules[block_path]
        experts = [(name, m) for name, m in block.children().items() if isinstance(m, EXPERT_LAYERS)]
        for name, layer in experts:
            wrapped[f"{block_path}.{name}"] = MultiLoRAExperts(layer, rows, num_slots, rank)
            setattr(block, name, wrapped[f"{block_path}.{name}"])
        replace[block_path] = AdapterRouting(block, rows, experts[0][1].num_experts)
    model.update_modules(_nested(replace))
    return wrapped


def _nested(flat: dict[str, Any]) -> dict:
    """{'a.b.0.c': m} -> {'a': {'b': [{'c': m}]}} as ``Module.update_modules`` takes it."""
    from mlx.utils import tree_unflatten

    return tree_unflatten(list(flat.items()))


class AdapterAdmission:
    """The scheduler's ``can_admit`` with adapters: a row starts once its adapter has a slot, and after
    the adapter rows queued before it (rows without an adapter go ahead); a row naming an adapter this
    engine does not serve (or whose file cannot be read any more) fails alone."""

    def __init__(self, bank: AdapterBank | None, scheduler: Any, fail: Any):
        self.bank, self.scheduler, self.fail = bank, scheduler, fail
        self._blocked_in = -1  # the scheduling pass (Scheduler.passes) in which an adapter row had to wait

    def __call__(self, seq: Any) -> bool:
        name = seq.sampling.adapter
        if name is None:
            return True
        if self._blocked_in == self.scheduler.passes:  # first come, first served among adapter rows: none
            return False                                # overtakes one still waiting for a slot
        try:
            if self.bank is None or name not in self.bank.adapters:
                raise AdapterError(f"this engine serves no LoRA adapter {name!r}")
            in_use = {s.sampling.adapter for s in (*self.scheduler.running, *self.scheduler.prefilling)}
            if self.bank.acquire(name, in_use):
                return True
            self._blocked_in = self.scheduler.passes
            return False
        except Exception as exc:
            self.fail([seq], exc)
            return False


def serve_adapters(model: Any, specs: tuple[tuple[str, str], ...], max_loras: int) -> AdapterBank:
    """Read and check every ``--lora NAME=PATH`` adapter and wrap ``model``'s adapted layers (engine thread);
    a vision-language model's language layers are adapted (their paths are mlx-lm's for the same model)."""
    module = getattr(model, "vlm", model)  # engine.vision_model.VisionLanguageModel drives an mlx-vlm module
    bank = AdapterBank(module, [read_adapter(name, path) for name, path in specs], max_loras)
    for name, _ in specs[:max_loras]:  # the first ones are ready before the first request
        bank.acquire(name, set())
    return bank