"""LoRA adapter folders as mlx-lm writes them, read and checked before anything is loaded.

An adapter folder (``mlx_lm.lora``'s output) holds ``adapter_config.json`` (``fine_tune_type``,
``lora_parameters.scale``) and ``adapters.safetensors``: for each adapted linear layer ``P``,
``P.lora_a`` (in, r) and ``P.lora_b`` (r, out) -- the layer computes ``W x + scale (x A) B`` -- and for
each adapted expert layer of a mixture-of-experts block (mlx-lm's ``SwitchLinear``), ``P.lora_a``
(experts, r, in) and ``P.lora_b`` (experts, out, r): each expert its own pair.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .mtp import safetensors_shapes

CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapters.safetensors"


class AdapterError(ValueError):
    """An adapter folder that cannot be served with this model (named in the message)."""


@dataclass(frozen=True)
class LayerShape:
    """An adapted layer as the adapter has it: in -> out at rank r; ``experts`` > 0 for an expert layer."""

    in_dims: int
    rank: int
    out_dims: int
    experts: int = 0


@dataclass(frozen=True)
class AdapterFile:
    """An adapter folder as read at startup: its layers' shapes, not yet its weights."""

    name: str
    path: Path
    scale: float
    shapes: dict[str, LayerShape]  # by layer path
    fingerprint: bytes  # names the adapter's weights: prefix-cache entries are kept apart by it

    @property
    def rank(self) -> int:
        return max((s.rank for s in self.shapes.values()), default=0)


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
    layers: dict[str, LayerShape] = {}
    for key in shapes:
        layer, _, leaf = key.rpartition(".")
        if leaf not in ("lora_a", "lora_b"):
            raise AdapterError(f"LoRA adapter {name!r}: tensor {key!r} is not a LoRA weight (lora_a / lora_b)")
        shape = layer_shape(shapes.get(f"{layer}.lora_a"), shapes.get(f"{layer}.lora_b"))
        if shape is None:
            raise AdapterError(f"LoRA adapter {name!r}: layer {layer!r} needs lora_a (in, r) and lora_b (r, out), or "
                               f"(experts, r, in) and (experts, out, r) for expert layers (got "
                               f"{shapes.get(f'{layer}.lora_a')} and {shapes.get(f'{layer}.lora_b')})")
        layers[layer] = shape
    return AdapterFile(name, folder, scale, layers, adapter_fingerprint(folder))


def layer_shape(a: list[int] | None, b: list[int] | None) -> LayerShape | None:
    if a is None or b is None or len(a) != len(b):
        return None
    if len(a) == 2 and a[1] == b[0]:
        return LayerShape(a[0], a[1], b[1])
    if len(a) == 3 and a[0] == b[0] and a[1] == b[2]:
        return LayerShape(a[2], a[1], b[1], experts=a[0])
    return None


def adapter_fingerprint(folder: Path) -> bytes:
    """A hash of the adapter's config and weights (what its cached prefixes are filed under)."""
    digest = hashlib.blake2b((folder / CONFIG_FILE).read_bytes(), digest_size=16)
    with open(folder / WEIGHTS_FILE, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.digest()


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
