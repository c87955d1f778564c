"""LoRA adapters in mlx-lm's format, many at once in one batch.

An adapter folder (what ``mlx_lm.lora`` writes) holds ``adapter_config.json`` (``fine_tune_type``,
``lora_parameters.scale``) and ``adapters.safetensors``: for each adapted linear layer ``P``,
``P.lora_a`` (in, r) and ``P.lora_b`` (r, out); the layer then computes ``W x + scale (x A) B``.

Every layer that any served adapter adapts is wrapped once (:class:`MultiLoRALinear`) around the
model's own layer (plain or quantized), with stacked copies of A (slots, in, r) and of scale * B
(slots, r, out), r the largest rank of all adapters (a smaller rank is zero-padded: the same
product). Slot 0 stays zero: rows without an adapter. The model runner says which adapter each row
of the forward it builds uses (:meth:`AdapterBank.selecting`): when no row has one the layers add
nothing; when every row has the same one its update is two plain matmuls; mixed rows gather their A
and B per row (``mx.gather_mm``) -- one forward for the whole batch, never split by adapter.

Adapters take slots on first use (:meth:`AdapterBank.acquire`, as a request is admitted). There are
``--max-loras`` slots; when all are taken, the least recently used adapter that no scheduled row uses
gives its slot up, and when every slot is in use the request waits in the queue.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import mlx.core as mx
import mlx.nn as nn

from .mtp import safetensors_shapes

CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapters.safetensors"


class AdapterError(ValueError):
    """An adapter folder that cannot be served with this model (named in the message)."""


@dataclass(frozen=True)
class AdapterFile:
    """An adapter folder as read at startup: its layers' shapes, not yet its weights."""

    name: str
    path: Path
    scale: float
    shapes: dict[str, tuple[int, int, int]]  # layer path -> (in, rank, out)
    fingerprint: bytes  # names the adapter's weights: prefix-cache entries are kept apart by it

    @property
    def rank(self) -> int:
        return max((r for _, r, _ in self.shapes.values()), default=0)


def read_adapter(name: str, path: str | Path) -> AdapterFile:
    """Read and check an mlx-lm adapter folder's config and tensor shapes (the weights stay on disk)."""
    folder = Path(path).expanduser()
    config_file, weights_file = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    if not config_file.is_file() or not weights_file.is_file():
        raise AdapterError(f"LoRA adapter {name!r}: {folder} is not an mlx-lm adapter folder "
                           f"(it needs {CONFIG_FILE} and {WEIGHTS_FILE})")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
        shapes = safetensors_shapes(weights_file)
    except (OSError, ValueError) as exc:
        raise AdapterError(f"LoRA adapter {name!r}: cannot read {folder}: {exc}") from exc
    kind = config.get("fine_tune_type", "lora")
    if kind != "lora":
        raise AdapterError(f"LoRA adapter {name!r}: fine_tune_type {kind!r} is not served (only 'lora'; fuse "
                           f"a {kind} fine-tune into the model with mlx_lm.fuse instead)")
    scale = float((config.get("lora_parameters") or {}).get("scale", 20.0))  # mlx-lm's default
    layers: dict[str, tuple[int, int, int]] = {}
    for key in shapes:
        layer, _, leaf = key.rpartition(".")
        if leaf not in ("lora_a", "lora_b"):
            raise AdapterError(f"LoRA adapter {name!r}: tensor {key!r} is not a LoRA weight (lora_a / lora_b)")
        a, b = shapes.get(f"{layer}.lora_a"), shapes.get(f"{layer}.lora_b")
        if a is None or b is None or len(a) != 2 or len(b) != 2 or a[1] != b[0]:
            raise AdapterError(f"LoRA adapter {name!r}: layer {layer!r} needs lora_a (in, r) and lora_b (r, out) "
                               f"(got {a} and {b}; adapters of mixture-of-experts or embedding layers are not "
                               f"served)")
        layers[layer] = (a[0], a[1], b[1])
    return AdapterFile(name, folder, scale, layers, adapter_fingerprint(folder))


def adapter_fingerprint(folder: Path) -> bytes:
    """A hash of the adapter's config and weights (what its cached prefixes are filed under)."""
    digest = hashlib.blake2b((folder / CONFIG_FILE).read_bytes(), digest_size=16)
    with open(folder / WEIGHTS_FILE, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.digest()


def linear_dims(layer: nn.Module) -> tuple[int, int]:
    """(in, out) of a plain or quantized linear layer."""
    out_dims, in_dims = layer.weight.shape
    if isinstance(layer, nn.QuantizedLinear):
        in_dims = in_dims * 32 // layer.bits
    return in_dims, out_dims


class AdapterRows:
    """Which slot each row of the forward being built uses (set only while the runner builds it)."""

    def __init__(self) -> None:
        self.single: int | None = None  # every row uses this slot
        self.slots: mx.array | None = None  # per row (mixed rows)


class MultiLoRALinear(nn.Module):
    """A linear layer plus the LoRA update of each row's adapter (slot 0: none)."""

    def __init__(self, base: nn.Module, rows: AdapterRows, num_slots: int, rank: int, dtype: mx.Dtype):
        super().__init__()
        self.base = base
        in_dims, out_dims = linear_dims(base)
        self._rows = rows
        self._a = mx.zeros((num_slots, in_dims, rank), dtype=dtype)  # stacked for rows of mixed adapters
        self._b = mx.zeros((num_slots, rank, out_dims), dtype=dtype)
        self._each: list[tuple[mx.array, mx.array] | None] = [None] * num_slots  # each slot's own A, B (its rank)

    def __call__(self, x: mx.array) -> mx.array:
        y = self.base(x)
        rows = self._rows
        if rows.single is not None:
            own = self._each[rows.single]
            if own is None:  # this adapter leaves the layer alone
                return y
            z = (x @ own[0]) @ own[1]
        elif rows.slots is not None:
            z = mx.gather_mm(mx.gather_mm(x, self._a, rhs_indices=rows.slots), self._b, rhs_indices=rows.slots)
        else:
            return y
        return y + (z if z.dtype == y.dtype else z.astype(y.dtype))

    def write(self, slot: int, a: mx.array | None, b: mx.array | None) -> None:
        """Put an adapter's A and scale * B into ``slot`` (None: the adapter leaves this layer alone)."""
        self._a[slot] = 0
        self._b[slot] = 0
        self._each[slot] = None
        if a is not None:
            r = a.shape[1]
            a, b = a.astype(self._a.dtype), b.astype(self._b.dtype)
            self._a[slot, :, :r] = a
            self._b[slot, :r, :] = b
            self._each[slot] = (a, b)

    def arrays(self) -> list[mx.array]:
        return [self._a, self._b, *(x for pair in self._each if pair is not None for x in pair)]


def layer_dtype(layer: nn.Module) -> mx.Dtype:
    return layer.scales.dtype if isinstance(layer, nn.QuantizedLinear) else layer.weight.dtype


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
        wrapped: dict[str, MultiLoRALinear] = {}
        for path in sorted({p for a in adapters for p in a.shapes}):
            base = modules[path]
            wrapped[path] = MultiLoRALinear(base, self.rows, self.num_slots, rank, layer_dtype(base))
        model.update_modules(_nested(wrapped))
        mx.eval([w.arrays() for w in wrapped.values()])
        self.layers = wrapped
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
        if adapter_fingerprint(adapter.path) != adapter.fingerprint:  # its cached prefixes would be stale
            raise AdapterError(f"LoRA adapter {adapter.name!r} changed on disk since the server started; restart "
                               f"it to serve the new weights")
        weights = mx.load(str(adapter.path / WEIGHTS_FILE))
        for path, layer in self.layers.items():
            if path in adapter.shapes:
                layer.write(slot, weights[f"{path}.lora_a"], adapter.scale * weights[f"{path}.lora_b"])
            else:
                layer.write(slot, None, None)
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
    for path, (in_dims, _, out_dims) in adapter.shapes.items():
        layer = modules.get(path)
        if layer is None:
            raise AdapterError(f"LoRA adapter {adapter.name!r} adapts {path!r}, which this model does not have: "
                               f"it was made for another base model")
        if not isinstance(layer, (nn.Linear, nn.QuantizedLinear)):
            raise AdapterError(f"LoRA adapter {adapter.name!r} adapts {path!r}, a {type(layer).__name__}: only "
                               f"linear layers are served")
        have = linear_dims(layer)
        if have != (in_dims, out_dims):
            raise AdapterError(f"LoRA adapter {adapter.name!r} does not fit this model: {path} maps "
                               f"{have[0]} -> {have[1]} here, the adapter {in_dims} -> {out_dims}; it was made "
                               f"for another base model")


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

    def __call__(self, seq: Any) -> bool:
        name = seq.sampling.adapter
        if name is None:
            return True
        try:
            if self.bank is None or name not in self.bank.adapters:
                raise AdapterError(f"this engine serves no LoRA adapter {name!r}")
            for earlier in self.scheduler.waiting:  # first come, first served among adapter rows: none
                if earlier is seq:                  # overtakes one still waiting for a slot
                    break
                if earlier.sampling.adapter is not None and earlier.sampling.adapter not in self.bank.slot_of:
                    return False
            in_use = {s.sampling.adapter for s in (*self.scheduler.running, *self.scheduler.prefilling)}
            return self.bank.acquire(name, in_use)
        except Exception as exc:
            self.fail([seq], exc)
            return False


def serve_adapters(model: nn.Module, specs: tuple[tuple[str, str], ...], max_loras: int) -> AdapterBank:
    """Read and check every ``--lora NAME=PATH`` adapter and wrap ``model``'s adapted layers (engine thread)."""
    if hasattr(model, "prefill_multimodal"):
        raise AdapterError("LoRA adapters are served on text models; serve this vision-language model with "
                           "--text-only to use them")
    bank = AdapterBank(model, [read_adapter(name, path) for name, path in specs], max_loras)
    for name, _ in specs[:max_loras]:  # the first ones are ready before the first request
        bank.acquire(name, set())
    return bank


def parse_lora_specs(entries: Any) -> tuple[tuple[str, str], ...]:
    """``--lora NAME=PATH ...`` (or a config file's ``{name: path}`` table) -> ((name, folder), ...),
    each folder read and checked now, so a bad one fails before any model is loaded."""
    if isinstance(entries, (str, dict)):
        entries = [entries]
    pairs: list[tuple[str, str]] = []
    for entry in entries:
        if isinstance(entry, dict):
            pairs += [(str(k), str(v)) for k, v in entry.items()]
            continue
        if isinstance(entry, (list, tuple)) and len(entry) == 2:  # as --print-config writes them
            pairs.append((str(entry[0]), str(entry[1])))
            continue
        name, sep, path = str(entry).partition("=")
        if not sep or not name.strip() or not path.strip():
            raise ValueError(f"give each adapter as NAME=PATH, not {entry!r}")
        pairs.append((name.strip(), path.strip()))
    names = [n for n, _ in pairs]
    if len(set(names)) != len(names):
        raise ValueError(f"adapter names must be unique: {', '.join(sorted({n for n in names if names.count(n) > 1}))}")
    for name, path in pairs:
        if ":" in name:
            raise ValueError(f"adapter name {name!r}: no ':' (requests name an adapter as NAME or MODEL:NAME)")
        read_adapter(name, path)
    return tuple((name, str(Path(path).expanduser().resolve())) for name, path in pairs)
