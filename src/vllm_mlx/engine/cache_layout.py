"""Which parts of a model's per-layer cache can be cut at any token, and which cannot.

A model's cache (``make_prompt_cache``) is a list with one entry per layer; an entry is a cache
object or a ``CacheList`` of several (Falcon-H1 pairs a Mamba state with a KV cache in every
layer). Flattened, every part (a *leaf*) is one of two kinds:

* ``kv``: a plain ``KVCache``. Its keys/values for tokens ``[a, b)`` are a slice, so they can be
  stored in blocks and any prefix can be rebuilt by concatenation.
* ``state``: anything else — a recurrent state (GatedDeltaNet, Mamba, short convolutions:
  ``ArraysCache``) or a sliding window (``RotatingKVCache``). Its value after token ``n`` cannot be
  derived from its value at another position, so it is copied whole at chosen positions
  (*checkpoints*).

:class:`CacheLayout` records the nesting so flat leaves can be put back together.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import mlx.core as mx
from mlx.utils import tree_flatten, tree_map
from mlx_lm.models.cache import CacheList, KVCache


def leaf_caches(caches: list[Any]) -> list[Any]:
    """Every layer's cache, a layer's ``CacheList`` (Falcon-H1: its Mamba state, its keys and values)
    taken apart: what dropping positions and rolling back work on, one cache at a time."""
    return [part for c in caches for part in (c.caches if isinstance(c, CacheList) else (c,))]


@dataclass(frozen=True)
class CacheLayout:
    parts: tuple[int, ...]  # per layer: 0 for a plain cache, k for a CacheList of k caches
    kinds: tuple[str, ...]  # per leaf: "kv" or "state"
    types: tuple[type, ...]  # per leaf: the cache class

    @classmethod
    def of(cls, caches: list[Any]) -> "CacheLayout":
        parts, leaves = [], []
        for c in caches:
            if isinstance(c, CacheList):
                parts.append(len(c.caches))
                leaves.extend(c.caches)
            else:
                parts.append(0)
                leaves.append(c)
        kinds = tuple("kv" if type(c) is KVCache else "state" for c in leaves)
        return cls(tuple(parts), kinds, tuple(type(c) for c in leaves))

    @property
    def kv_leaves(self) -> list[int]:
        return [i for i, k in enumerate(self.kinds) if k == "kv"]

    @property
    def state_leaves(self) -> list[int]:
        return [i for i, k in enumerate(self.kinds) if k == "state"]

    @property
    def all_kv(self) -> bool:
        return not self.state_leaves

    def leaves(self, caches: list[Any]) -> list[Any]:
        return leaf_caches(caches)

    def assemble(self, leaves: list[Any]) -> list[Any]:
        """Per-layer caches from flat leaves (inverse of :meth:`leaves`)."""
        out, i = [], 0
        for k in self.parts:
            if k:
                out.append(CacheList(*leaves[i : i + k]))
                i += k
            else:
                out.append(leaves[i])
                i += 1
        return out


def copy_state(state: Any) -> Any:
    """New arrays for a cache state (in-place cache updates must not reach the copy)."""
    return tree_map(lambda x: mx.array(x) if isinstance(x, mx.array) else x, state)


def state_arrays(state: Any) -> list[mx.array]:
    return [x for _, x in tree_flatten(state) if isinstance(x, mx.array)]


def state_bytes(state: Any) -> int:
    return sum(x.nbytes for x in state_arrays(state))


def restore_leaf(cls: type, state: Any) -> Any:
    """A cache object of class ``cls`` holding a copy of ``state``."""
    return cls.from_state(copy_state(state))


def clone_cache(caches: list[Any]) -> list[Any]:
    """An independent copy of a per-layer cache (for comparing two continuations)."""
    layout = CacheLayout.of(caches)
    leaves = layout.leaves(caches)
    return layout.assemble([restore_leaf(type(c), c.state) for c in leaves])
