"""The prefix cache's disk tier: blocks and checkpoints persisted as safetensors files.

Layout: ``DIR/<model fingerprint hash>/<block hash>.safetensors`` for a block (the KV leaves'
keys/values of one block) and ``DIR/<...>/c-<key>.safetensors`` for a checkpoint (its tail tokens'
keys/values and every state leaf's state). The metadata repeats the model fingerprint, the parent
block hash ('' at the start; a prefix-cache namespace's root at that namespace's start) and the
tokens, and carries a checksum of the tensor bytes.

Files are untrusted input: a file is used only if its metadata matches what the lookup expects,
its checksum matches its bytes, and every tensor has the shape and dtype this model's cache has
(:class:`StateShapes`, measured on the model at start). Anything else — another model, an old
format, a damaged or edited file — is counted (``rejected``), deleted, and never loaded. The
folder is kept under a byte bound by deleting the least recently used files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten, tree_unflatten

from ..models.safetensors_header import read_header

logger = logging.getLogger(__name__)

FORMAT = "vllm-mlx-kv-block-v2"
CHECKPOINT_FORMAT = "vllm-mlx-checkpoint-v1"
MAX_HEADER_BYTES = 16 << 20


def tensor_checksum(arrays: dict[str, mx.array]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(arrays):
        x = mx.contiguous(arrays[name])
        mx.eval(x)
        h.update(name.encode() + b"\0" + str(x.dtype).encode() + str(x.shape).encode())
        h.update(memoryview(x))
    return h.hexdigest()


@dataclass(frozen=True)
class StateShapes:
    """The shape/dtype of each KV leaf (any token count) and the structure of each state leaf."""

    kv: tuple  # per KV leaf: ((heads, dim, dtype) of keys, same of values)
    states: tuple  # per state leaf: ((path, "array", shape with None for free axes, dtype) | (path, "value", v|None))

    @classmethod
    def of(cls, kv: list, states_one: list, states_two: list) -> "StateShapes":
        """From a cache after one token and after two (what differs between them is free)."""
        kv_shapes = tuple(tuple((x.shape[1], x.shape[3], str(x.dtype)) for x in pair) for pair in kv)
        leaves = []
        for one, two in zip(states_one, states_two):
            items = []
            for (path, a), (_, b) in zip(tree_flatten(one), tree_flatten(two)):
                if isinstance(a, mx.array):
                    shape = tuple(x if isinstance(b, mx.array) and x == y else None for x, y in zip(a.shape, b.shape))
                    items.append((path, "array", shape, str(a.dtype)))
                else:
                    items.append((path, "value", a if a == b else None))
            leaves.append(tuple(items))
        return cls(kv_shapes, tuple(leaves))

    def check_kv(self, kv: list, tokens: int, dequantize) -> None:
        if len(kv) != len(self.kv):
            raise ValueError(f"{len(kv)} KV layers, the model has {len(self.kv)}")
        for j, (pair, expected) in enumerate(zip(kv, self.kv)):
            if pair is None:
                if tokens:
                    raise ValueError(f"KV layer {j} is missing")
                continue
            for x, (heads, dim, dtype) in zip(pair, expected):
                x = dequantize(x)
                if x.ndim != 4 or (x.shape[0], x.shape[1], x.shape[2], x.shape[3]) != (1, heads, tokens, dim) \
                        or str(x.dtype) != dtype:
                    raise ValueError(f"KV layer {j} has shape {x.shape} {x.dtype}, "
                                     f"expected (1, {heads}, {tokens}, {dim}) {dtype}")

    def check_states(self, states: list) -> None:
        if len(states) != len(self.states):
            raise ValueError(f"{len(states)} state layers, the model has {len(self.states)}")
        for j, (state, expected) in enumerate(zip(states, self.states)):
            flat = tree_flatten(state)
            if [p for p, _ in flat] != [e[0] for e in expected]:
                raise ValueError(f"state layer {j} has another structure")
            for (path, x), e in zip(flat, expected):
                if e[1] == "array":
                    if not isinstance(x, mx.array) or str(x.dtype) != e[3] or len(x.shape) != len(e[2]) \
                            or any(want is not None and got != want for got, want in zip(x.shape, e[2])):
                        raise ValueError(f"state layer {j} ({path}) does not match the model's cache")
                elif e[2] is not None and x != e[2]:
                    raise ValueError(f"state layer {j} ({path}) is {x!r}, expected {e[2]!r}")


def _kv_arrays(prefix: str, kv: list) -> dict[str, mx.array]:
    arrays = {}
    for j, pair in enumerate(kv):
        if pair is None:
            continue
        for name, stored in zip("kv", pair):
            for i, part in enumerate(stored if isinstance(stored, tuple) else (stored,)):
                if isinstance(part, mx.array):
                    arrays[f"{prefix}{j}.{name}.{i}"] = part
    return arrays


def _kv_from(prefix: str, arrays: dict, count: int, quantization: list | None) -> list:
    kv = []
    for j in range(count):
        if f"{prefix}{j}.k.0" not in arrays:
            kv.append(None)
            continue
        pair = []
        for name in "kv":
            if quantization:
                pair.append((*(arrays[f"{prefix}{j}.{name}.{i}"] for i in range(3)), *quantization))
            else:
                pair.append(arrays[f"{prefix}{j}.{name}.0"])
        kv.append(tuple(pair))
    return kv


def _quantization(kv: list) -> list | None:
    first = next((p for p in kv if p is not None), None)
    return list(first[0][3:]) if first is not None and isinstance(first[0], tuple) else None


def read_metadata(path: Path) -> dict:
    """A safetensors file's metadata, from its header alone."""
    return read_header(path, MAX_HEADER_BYTES).get("__metadata__", {})


class BlockDiskStore:
    def __init__(self, root: Path, fingerprint: str, max_bytes: int, shapes: StateShapes):
        self.fingerprint = fingerprint
        self.shapes = shapes
        digest = hashlib.blake2b(fingerprint.encode(), digest_size=8).hexdigest()
        self.folder = Path(root).expanduser() / digest
        self.folder.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.writes = self.reads = self.rejected = 0
        self._bytes = sum(f.stat().st_size for f in self.folder.glob("*.safetensors"))
        self._checkpoints: dict[str, dict[bytes, tuple[int, ...]]] = {}  # parent hex -> {key: tail}
        for f in self.folder.glob("c-*.safetensors"):
            try:
                meta = read_metadata(f)
                tail = tuple(json.loads(meta["tokens"]))
                self._checkpoints.setdefault(meta["parent"], {})[bytes.fromhex(f.stem[2:])] = tail
            except Exception as exc:
                self._reject(f, exc)
        self._prune()

    def _path(self, key: bytes, checkpoint: bool = False) -> Path:
        return self.folder / f"{'c-' if checkpoint else ''}{key.hex()}.safetensors"

    def _write(self, path: Path, arrays: dict, metadata: dict) -> None:
        metadata["checksum"] = tensor_checksum(arrays)
        tmp = path.with_suffix(".tmp.safetensors")
        mx.save_safetensors(str(tmp), arrays, metadata=metadata)
        os.replace(tmp, path)  # atomic: a reader never sees half a file
        self._bytes += path.stat().st_size
        self.writes += 1
        if self._bytes > self.max_bytes:
            self._prune()

    def _read(self, path: Path, expected: dict) -> tuple[dict, dict]:
        arrays, meta = mx.load(str(path), return_metadata=True)
        wrong = [key for key, value in expected.items() if meta.get(key) != value]
        if wrong:
            raise ValueError(f"metadata mismatch: {', '.join(wrong)}")
        if meta.get("checksum") != tensor_checksum(arrays):
            raise ValueError("checksum mismatch: the tensor bytes were changed")
        return arrays, meta

    def _reject(self, path: Path, exc: BaseException) -> None:
        self.rejected += 1
        logger.warning("ignoring prefix-cache file %s: %s", path.name, exc)
        try:
            size = path.stat().st_size
            path.unlink()
            self._bytes -= size
        except OSError:
            pass

    # -- blocks ----------------------------------------------------------------------
    def save(self, block_hash: bytes, parent: bytes | None, tokens: list[int], kv: list) -> None:
        path = self._path(block_hash)
        if path.exists():
            os.utime(path)
            return
        self._write(path, _kv_arrays("", kv), {
            "format": FORMAT, "fingerprint": self.fingerprint, "parent": parent.hex() if parent else "",
            "tokens": json.dumps(tokens), "layers": str(len(kv)), "quantization": json.dumps(_quantization(kv))})

    def load(self, block_hash: bytes, parent: bytes | None, tokens: list[int], kv_bits: int | None, dequantize):
        """The block's per-KV-leaf (keys, values) in the cache's stored form, or None."""
        path = self._path(block_hash)
        if not path.exists():
            return None
        try:
            arrays, meta = self._read(path, {"format": FORMAT, "fingerprint": self.fingerprint,
                                             "parent": parent.hex() if parent else "", "tokens": json.dumps(tokens)})
            quantization = json.loads(meta.get("quantization", "null"))
            if bool(quantization) != bool(kv_bits):
                raise ValueError("metadata mismatch: quantization")
            kv = _kv_from("", arrays, int(meta["layers"]), quantization)
            self.shapes.check_kv(kv, len(tokens), dequantize)
        except Exception as exc:  # damaged, foreign, edited or outdated: never used
            self._reject(path, exc)
            return None
        os.utime(path)
        self.reads += 1
        return kv

    # -- checkpoints ---------------------------------------------------------------------
    def checkpoints_under(self, parent: bytes | None) -> dict[bytes, tuple[int, ...]]:
        """Checkpoints on disk after block ``parent`` (None: the start; a namespace's root: that namespace's
        start), by key, with their tail tokens."""
        return dict(self._checkpoints.get(parent.hex() if parent else "", {}))

    def save_checkpoint(self, key: bytes, parent: bytes | None, tail: tuple[int, ...], kv: list,
                        states: list) -> None:
        path = self._path(key, checkpoint=True)
        if path.exists():
            os.utime(path)
            return
        arrays = _kv_arrays("kv.", kv)
        layout = []
        for j, state in enumerate(states):
            items = []
            for p, x in tree_flatten(state):
                if isinstance(x, mx.array):
                    arrays[f"s.{j}.{p}"] = x
                    items.append([p, "array"])
                else:
                    items.append([p, "value", x])
            layout.append(items)
        parent_hex = parent.hex() if parent else ""
        self._write(path, arrays, {
            "format": CHECKPOINT_FORMAT, "fingerprint": self.fingerprint, "parent": parent_hex,
            "tokens": json.dumps(list(tail)), "layers": str(len(kv)), "quantization": json.dumps(_quantization(kv)),
            "states": json.dumps(layout)})
        self._checkpoints.setdefault(parent_hex, {})[key] = tuple(tail)

    def load_checkpoint(self, key: bytes, parent: bytes | None, kv_bits: int | None, dequantize):
        """(tail tokens, per-KV-leaf tail keys/values, per-state-leaf states), or None."""
        path = self._path(key, checkpoint=True)
        parent_hex = parent.hex() if parent else ""
        tail = self._checkpoints.get(parent_hex, {}).get(key)
        if tail is None or not path.exists():
            return None
        try:
            arrays, meta = self._read(path, {"format": CHECKPOINT_FORMAT, "fingerprint": self.fingerprint,
                                             "parent": parent_hex, "tokens": json.dumps(list(tail))})
            quantization = json.loads(meta.get("quantization", "null"))
            if quantization and bool(quantization) != bool(kv_bits):
                raise ValueError("metadata mismatch: quantization")
            kv = _kv_from("kv.", arrays, int(meta["layers"]), quantization)
            self.shapes.check_kv(kv, len(tail), dequantize)
            states = []
            for j, items in enumerate(json.loads(meta["states"])):
                flat = [(p, arrays[f"s.{j}.{p}"]) if kind == "array" else (p, rest[0]) for p, kind, *rest in items]
                states.append(tree_unflatten(flat) if flat else [])
            self.shapes.check_states(states)
        except Exception as exc:
            self._checkpoints.get(parent_hex, {}).pop(key, None)
            self._reject(path, exc)
            return None
        os.utime(path)
        self.reads += 1
        return tail, kv, states

    # -- upkeep ----------------------------------------------------------------------------
    def _prune(self) -> None:
        if self._bytes <= self.max_bytes:
            return
        files = sorted(self.folder.glob("*.safetensors"), key=lambda f: f.stat().st_mtime)
        for f in files:
            if self._bytes <= self.max_bytes * 0.9:
                break
            size = f.stat().st_size
            f.unlink(missing_ok=True)
            self._bytes -= size
            if f.name.startswith("c-"):
                for index in self._checkpoints.values():
                    index.pop(bytes.fromhex(f.stem[2:]), None)

    def clear(self) -> None:
        for f in self.folder.glob("*.safetensors"):
            f.unlink(missing_ok=True)
        self._checkpoints.clear()
        self._bytes = 0
