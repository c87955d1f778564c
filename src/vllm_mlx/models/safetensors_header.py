"""A safetensors file's header -- tensor names, shapes, metadata -- read without its tensors."""

from __future__ import annotations

import json
import struct
from pathlib import Path

MAX_HEADER_BYTES = 100 << 20  # a header larger than this is refused rather than read


def read_header(path: str | Path, max_bytes: int = MAX_HEADER_BYTES) -> dict:
    """The JSON header: each tensor's entry by name, and ``__metadata__`` when the file has any.
    A ValueError for a header over ``max_bytes`` or one that is not JSON; OSError as ``open`` raises it."""
    with open(path, "rb") as f:
        size = struct.unpack("<Q", f.read(8))[0]
        if size > max_bytes:
            raise ValueError("header too large")
        return json.loads(f.read(size))


def safetensors_shapes(path: str | Path) -> dict[str, list[int]]:
    """Each tensor's shape, by name."""
    return {name: entry["shape"] for name, entry in read_header(path).items() if name != "__metadata__"}
