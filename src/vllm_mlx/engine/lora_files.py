"""LoRA adapter folders, read and checked before anything is loaded: mlx-lm's and PEFT's.

mlx-lm (``mlx_lm.lora``'s output): ``adapter_config.json`` (``fine_tune_type``,
``lora_parameters.scale``) and ``adapters.safetensors``: for each adapted linear layer ``P``,
``P.lora_a`` (in, r) and ``P.lora_b`` (r, out) -- the layer computes ``W x + scale (x A) B`` -- and for
each adapted expert layer of a mixture-of-experts block (mlx-lm's ``SwitchLinear``), ``P.lora_a``
(experts, r, in) and ``P.lora_b`` (experts, out, r): each expert its own pair.

PEFT (Hugging Face's ``save_pretrained``): ``adapter_config.json`` (``peft_type`` LORA, ``r``,
``lora_alpha``, ``use_rslora``) and ``adapter_model.safetensors`` with
``base_model.model.P.lora_A.weight`` (r, in) and ``...lora_B.weight`` (out, r); the scale is
``lora_alpha / r`` (``/ sqrt(r)`` with rsLoRA), r each layer's own rank.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ..models.safetensors_header import safetensors_shapes

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE, PEFT_WEIGHTS_FILE = "adapters.safetensors", "adapter_model.safetensors"  # mlx-lm's, PEFT's
PEFT_PREFIX = "base_model.model."
# PEFT settings whose adapters are not plain LoRA on linear layers, with their plain values
PEFT_PLAIN = (("use_dora", False), ("fan_in_fan_out", False), ("bias", "none"), ("modules_to_save", None),
              ("alpha_pattern", MappingProxyType({})), ("layer_replication", None))


class AdapterError(ValueError):
    """An adapter folder that cannot be served with this model (named in the message)."""


@dataclass(frozen=True)
class LayerShape:
    """An adapted layer as the adapter has it: in -> out at rank r (``experts`` > 0: an expert layer), its
    scale, and where its A and B are in the file (``transposed``: PEFT's (r, in) and (out, r))."""

    in_dims: int
    rank: int
    out_dims: int
    experts: int = 0
    scale: float = 1.0
    a_key: str = ""
    b_key: str = ""
    transposed: bool = False


@dataclass(frozen=True)
class AdapterFile:
    """An adapter folder as read at startup: its layers' shapes, not yet its weights."""

    name: str
    path: Path
    weights: Path  # its safetensors file
    shapes: dict[str, LayerShape]  # by layer path
    fingerprint: bytes  # names the adapter's weights: prefix-cache entries are kept apart by it

    @property
    def rank(self) -> int:
        return max((s.rank for s in self.shapes.values()), default=0)


def read_adapter(name: str, path: str | Path) -> AdapterFile:
    """Read and check an adapter folder's config and tensor shapes, and fingerprint its weights (which
    stay on disk)."""
    folder, weights_file, layers = adapter_layers(name, path)
    return AdapterFile(name, folder, weights_file, layers, adapter_fingerprint(folder / CONFIG_FILE, weights_file))


def adapter_layers(name: str, path: str | Path) -> tuple[Path, Path, dict[str, LayerShape]]:
    """(folder, weights file, adapted layers) of an adapter folder, checked; only headers are read."""
    folder = Path(path).expanduser()
    config_file = folder / CONFIG_FILE
    weights_file = next((folder / f for f in (WEIGHTS_FILE, PEFT_WEIGHTS_FILE) if (folder / f).is_file()), None)
    if not config_file.is_file() or weights_file is None:
        raise AdapterError(f"LoRA adapter {name!r}: {folder} is not an adapter folder (it needs {CONFIG_FILE} and "
                           f"{WEIGHTS_FILE} as mlx-lm writes them, or {PEFT_WEIGHTS_FILE} as PEFT does)")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
        shapes = safetensors_shapes(weights_file)
    except (OSError, ValueError) as exc:
        raise AdapterError(f"LoRA adapter {name!r}: cannot read {folder}: {exc}") from exc
    peft = weights_file.name == PEFT_WEIGHTS_FILE
    return folder, weights_file, peft_layers(name, config, shapes) if peft else mlx_layers(name, config, shapes)


def mlx_layers(name: str, config: dict, shapes: dict[str, list[int]]) -> dict[str, LayerShape]:
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
        a_key, b_key = f"{layer}.lora_a", f"{layer}.lora_b"
        shape = layer_shape(shapes.get(a_key), shapes.get(b_key))
        if shape is None:
            raise AdapterError(f"LoRA adapter {name!r}: layer {layer!r} needs lora_a (in, r) and lora_b (r, out), or "
                               f"(experts, r, in) and (experts, out, r) for expert layers (got "
                               f"{shapes.get(a_key)} and {shapes.get(b_key)})")
        layers[layer] = replace(shape, scale=scale, a_key=a_key, b_key=b_key)
    return layers


def peft_layers(name: str, config: dict, shapes: dict[str, list[int]]) -> dict[str, LayerShape]:
    kind = config.get("peft_type", "LORA")
    if kind != "LORA":
        raise AdapterError(f"LoRA adapter {name!r}: PEFT type {kind!r} is not served (only LORA)")
    for setting, plain in PEFT_PLAIN:
        if config.get(setting, plain) not in (plain, None):
            raise AdapterError(f"LoRA adapter {name!r}: PEFT's {setting}={config[setting]!r} is not served (plain "
                               f"LoRA on linear layers only; merge it into the model with PEFT instead)")
    alpha = float(config.get("lora_alpha", 8))
    rslora = bool(config.get("use_rslora", False))
    layers: dict[str, LayerShape] = {}
    for key in shapes:
        if not key.startswith(PEFT_PREFIX) or not key.endswith((".lora_A.weight", ".lora_B.weight")):
            raise AdapterError(f"LoRA adapter {name!r}: tensor {key!r} is not a LoRA weight of a linear layer "
                               f"(base_model.model.LAYER.lora_A.weight / lora_B.weight)")
        layer = key[len(PEFT_PREFIX):-len(".lora_A.weight")]
        a_key, b_key = f"{PEFT_PREFIX}{layer}.lora_A.weight", f"{PEFT_PREFIX}{layer}.lora_B.weight"
        a, b = shapes.get(a_key), shapes.get(b_key)
        if a is None or b is None or len(a) != 2 or len(b) != 2 or a[0] != b[1]:
            raise AdapterError(f"LoRA adapter {name!r}: layer {layer!r} needs lora_A (r, in) and lora_B (out, r) "
                               f"(got {a} and {b})")
        r = a[0]
        layers[layer] = LayerShape(a[1], r, b[0], scale=alpha / (r ** 0.5 if rslora else r), a_key=a_key,
                                   b_key=b_key, transposed=True)
    return layers


def layer_shape(a: list[int] | None, b: list[int] | None) -> LayerShape | None:
    if a is None or b is None or len(a) != len(b):
        return None
    if len(a) == 2 and a[1] == b[0]:
        return LayerShape(a[0], a[1], b[1])
    if len(a) == 3 and a[0] == b[0] and a[1] == b[2]:
        return LayerShape(a[2], a[1], b[1], experts=a[0])
    return None


def adapter_fingerprint(config_file: Path, weights_file: Path) -> bytes:
    """A hash of the adapter's config and weights (what its cached prefixes are filed under)."""
    digest = hashlib.blake2b(config_file.read_bytes(), digest_size=16)
    with open(weights_file, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.digest()


def parse_lora_specs(entries: Any) -> tuple[tuple[str, str], ...]:
    """``--lora NAME=PATH ...`` (or a config file's ``{name: path}`` table) -> ((name, folder), ...),
    each folder's config and headers checked now, so a bad one fails before any model is loaded (the
    engine reads them again, with the model, and fingerprints the weights)."""
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
        adapter_layers(name, path)
    return tuple((name, str(Path(path).expanduser().resolve())) for name, path in pairs)
