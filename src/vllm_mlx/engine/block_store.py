"""The prefix cache's disk tier: KV blocks persisted as safetensors files.

Layout: ``DIR/<model fingerprint hash>/<block hash>.safetensors``. A block file
holds every layer's keys and values for one block, and its metadata repeats
the model fingerprint, the parent block hash and the block's tokens. A file is
used only if all of these match what the lookup expects, so a cache folder
shared between models, an old format or a damaged file is skipped with a
warning and never loaded into the wrong model. The folder is kept under a
byte bound by deleting the least recently used files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import mlx.core as mx

logger = logging.getLogger(__name__)

FORMAT = "vllm-mlx-kv-block-v1"


class BlockDiskStore:
    def __init__(self, root: Path, fingerprint: str, max_bytes: int):
        self.fingerprint = fingerprint
        digest = hashlib.blake2b(fingerprint.encode(), digest_size=8).hexdigest()
        self.folder = Path(root).expanduser() / digest
        self.folder.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.writes = self.reads = self.rejected = 0
        self._bytes = sum(f.stat().st_size for f in self.folder.glob("*.safetensors"))
        self._prune()

    def _path(self, block_hash: bytes) -> Path:
        return self.folder / f"{block_hash.hex()}.safetensors"

    def save(self, block_hash: bytes, parent: bytes | None, tokens: list[int], kv: list[tuple[Any, Any]]) -> None:
        path = self._path(block_hash)
        if path.exists():
            os.utime(path)
            return
        arrays = {}
        for layer, (k, v) in enumerate(kv):
            for name, stored in (("k", k), ("v", v)):
                parts = stored if isinstance(stored, tuple) else (stored,)
                for j, part in enumerate(parts):
                    if isinstance(part, mx.array):
                        arrays[f"{layer}.{name}.{j}"] = part
        quantized = isinstance(kv[0][0], tuple)
        metadata = {
            "format": FORMAT,
            "fingerprint": self.fingerprint,
            "parent": parent.hex() if parent else "",
            "tokens": json.dumps(tokens),
            "layers": str(len(kv)),
            "quantization": json.dumps(list(kv[0][0][3:]) if quantized else None),
        }
        tmp = path.with_suffix(".tmp.safetensors")
        mx.save_safetensors(str(tmp), arrays, metadata=metadata)
        tmp.replace(path)  # atomic: a reader never sees half a file
        self._bytes += path.stat().st_size
        self.writes += 1
        if self._bytes > self.max_bytes:
            self._prune()

    def load(self, block_hash: bytes, parent: bytes | None, tokens: list[int], kv_bits: int | None):
        """The block's per-layer (keys, values) in the cache's stored form, or None."""
        path = self._path(block_hash)
        if not path.exists():
            return None
        try:
            arrays, meta = mx.load(str(path), return_metadata=True)
            expected = {"format": FORMAT, "fingerprint": self.fingerprint,
                        "parent": parent.hex() if parent else "", "tokens": json.dumps(tokens)}
            wrong = [key for key, value in expected.items() if meta.get(key) != value]
            quantization = json.loads(meta.get("quantization", "null"))
            if bool(quantization) != bool(kv_bits):
                wrong.append("quantization")
            if wrong:
                raise ValueError(f"metadata mismatch: {', '.join(wrong)}")
            kv = []
            for layer in range(int(meta["layers"])):
                pair = []
                for name in ("k", "v"):
                    if quantization:
                        parts = [arrays[f"{layer}.{name}.{j}"] for j in range(3)]
                        pair.append((*parts, *quantization))
                    else:
                        pair.append(arrays[f"{layer}.{name}.0"])
                kv.append(tuple(pair))
        except Exception as exc:  # damaged, foreign or outdated: never used
            self.rejected += 1
            logger.warning("ignoring prefix-cache file %s: %s", path.name, exc)
            try:
                path.unlink()
            except OSError:
                pass
            return None
        os.utime(path)
        self.reads += 1
        return kv

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

    def clear(self) -> None:
        for f in self.folder.glob("*.safetensors"):
            f.unlink(missing_ok=True)
        self._bytes = 0
