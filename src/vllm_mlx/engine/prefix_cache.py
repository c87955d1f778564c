"""The prefix cache: reuse of keys/values across requests that share a token prefix.

Two stores behind one interface, chosen by the model's cache layout:

* **Blocks** (every layer a plain ``KVCache``): the token sequence is cut into
  fixed-size blocks; block i is identified by a chained hash
  ``h_i = H(h_{i-1}, tokens of block i)`` rooted in a fingerprint of the model,
  so a hash names the whole prefix up to that block. A block holds that slice
  of keys/values for every layer (optionally quantized). A new prompt walks its
  block hashes from the start and reuses the longest cached run. Blocks are
  reference-counted by their cached children and evicted least-recently-used,
  leaves first, so a cached prefix never loses an inner block.
* **Snapshots** (recurrent, hybrid or sliding-window layers, whose state cannot
  be cut at an arbitrary token): the whole per-layer state is copied at message
  boundaries — the end of a prompt and the end of a completion — keyed by the
  hash of the tokens it covers. A new prompt reuses the longest snapshot that is
  a strict prefix of it. No partial reuse is ever attempted.

Both leave at least one prompt token to compute, so the last logits are fresh.
The store never exceeds its byte budget and ``shrink`` lets the engine give
memory back to the running batch.
"""

from __future__ import annotations

import hashlib
import json
from array import array
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
from mlx.utils import tree_map
from mlx_lm.models.cache import KVCache, make_prompt_cache

from ..platform import available_memory_bytes
from .block_store import BlockDiskStore


def _digest(parent: bytes, tokens: list[int]) -> bytes:
    return hashlib.blake2b(parent + array("i", tokens).tobytes(), digest_size=16).digest()


def _copy_state(state: Any) -> Any:
    """New array objects for a cache state (in-place cache updates must not reach the copy)."""
    return tree_map(lambda x: mx.array(x) if isinstance(x, mx.array) else x, state)


def _state_bytes(state: Any) -> int:
    total = 0

    def add(x):
        nonlocal total
        if isinstance(x, mx.array):
            total += x.nbytes
        return x

    tree_map(add, state)
    return total


@dataclass
class PrefixHit:
    num_tokens: int = 0
    cache: list[Any] | None = None  # a fresh per-layer cache holding the reused prefix


@dataclass
class _Block:
    parent: bytes | None
    kv: list[tuple[Any, Any]]  # per layer (keys, values), each (1, heads, tokens, dim), maybe quantized
    nbytes: int
    children: int = 0
    tail: tuple[int, ...] | None = None  # set for a partial block: the tokens after the last full block


@dataclass
class _Snapshot:
    num_tokens: int
    states: list[tuple[type, Any]]
    nbytes: int


@dataclass
class PrefixCacheStats:
    queries: int = 0
    hits: int = 0
    queried_tokens: int = 0
    hit_tokens: int = 0
    entries: int = 0
    bytes: int = 0
    evictions: int = 0
    budget_bytes: int = 0
    mode: str = "blocks"

    @property
    def token_hit_rate(self) -> float:
        return self.hit_tokens / self.queried_tokens if self.queried_tokens else 0.0


class PrefixCache:
    def __init__(
        self,
        template_cache: list[Any],
        budget_bytes: int,
        fingerprint: str,
        block_size: int = 64,
        kv_bits: int | None = None,
        disk: BlockDiskStore | None = None,
    ):
        self.block_mode = all(type(c) is KVCache for c in template_cache)
        self.block_size = block_size
        self.kv_bits = kv_bits
        self.disk = disk if self.block_mode else None  # snapshots stay in memory
        self.root = hashlib.blake2b(fingerprint.encode(), digest_size=16).digest()
        self._blocks: OrderedDict[bytes, _Block] = OrderedDict()
        # Partial blocks ("tails"), by the hash of the full block before them (root for none):
        # a sequence's last, incomplete block, matched token by token.
        self._tails: dict[bytes, set[bytes]] = {}
        self._snapshots: OrderedDict[bytes, _Snapshot] = OrderedDict()
        self.stats = PrefixCacheStats(budget_bytes=budget_bytes, mode="blocks" if self.block_mode else "snapshots")

    # -- lookup ---------------------------------------------------------------
    def block_hashes(self, tokens: list[int], limit: int | None = None) -> list[bytes]:
        """Chained hashes of the full blocks of ``tokens`` (at most ``limit`` tokens covered)."""
        n = len(tokens) if limit is None else min(limit, len(tokens))
        hashes, parent = [], self.root
        for start in range(0, n - n % self.block_size, self.block_size):
            parent = _digest(parent, tokens[start : start + self.block_size])
            hashes.append(parent)
        return hashes

    def lookup(self, prompt: list[int]) -> PrefixHit:
        """The longest reusable prefix of ``prompt`` (always leaving one token to compute)."""
        self.stats.queries += 1
        self.stats.queried_tokens += len(prompt)
        hit = self._lookup_blocks(prompt) if self.block_mode else self._lookup_snapshot(prompt)
        if hit.num_tokens:
            self.stats.hits += 1
            self.stats.hit_tokens += hit.num_tokens
        return hit

    def _lookup_blocks(self, prompt: list[int]) -> PrefixHit:
        found: list[tuple[_Block, int]] = []  # (block, tokens of it used)
        last, matched, usable = None, 0, len(prompt) - 1  # one prompt token is always computed
        for i, h in enumerate(self.block_hashes(prompt)):
            block = self._blocks.get(h) or self._from_disk(h, last, prompt[i * self.block_size :][: self.block_size])
            if block is None:
                break
            self._blocks.move_to_end(h)
            take = min(self.block_size, usable - matched)
            found.append((block, take))
            matched += take
            if take < self.block_size:
                break
            last = h
        tail = None if matched % self.block_size else self._best_tail(last or self.root, prompt[matched:usable])
        if tail is not None:
            found.append(tail)
            matched += tail[1]
        if not found:
            return PrefixHit()
        cache = []
        for layer in range(len(found[0][0].kv)):
            keys = mx.concatenate([self._load(b.kv[layer][0])[..., :n, :] for b, n in found], axis=2)
            values = mx.concatenate([self._load(b.kv[layer][1])[..., :n, :] for b, n in found], axis=2)
            c = KVCache()
            c.update_and_fetch(keys, values)
            cache.append(c)
        self._evict_to(self.stats.budget_bytes)  # blocks read back from disk count against the budget
        return PrefixHit(matched, cache)

    def _best_tail(self, parent: bytes, wanted: list[int]) -> tuple[_Block, int] | None:
        """The cached partial block after ``parent`` sharing the most leading tokens with ``wanted``."""
        best, best_len = None, 0
        for key in self._tails.get(parent, ()):
            block = self._blocks[key]
            n = 0
            for a, b in zip(block.tail, wanted):
                if a != b:
                    break
                n += 1
            if n > best_len:
                best, best_len = key, n
        if best is None:
            return None
        self._blocks.move_to_end(best)
        return self._blocks[best], best_len

    def _lookup_snapshot(self, prompt: list[int]) -> PrefixHit:
        best: tuple[bytes, _Snapshot] | None = None
        for key, snap in self._snapshots.items():
            n = snap.num_tokens
            if n < len(prompt) and (best is None or n > best[1].num_tokens):
                if key == _digest(self.root, prompt[:n]):
                    best = (key, snap)
        if best is None:
            return PrefixHit()
        self._snapshots.move_to_end(best[0])
        cache = [cls.from_state(_copy_state(state)) for cls, state in best[1].states]
        return PrefixHit(best[1].num_tokens, cache)

    def _from_disk(self, h: bytes, parent: bytes | None, tokens: list[int]) -> _Block | None:
        if self.disk is None or (parent is not None and parent not in self._blocks):
            return None
        kv = self.disk.load(h, parent, tokens, self.kv_bits)
        if kv is None:
            return None
        return self._add_block(h, parent, kv)

    def _add_block(self, h: bytes, parent: bytes | None, kv: list, tail: tuple[int, ...] | None = None) -> _Block:
        nbytes = _state_bytes(kv)  # plain or quantized (arrays plus group/axis ints): arrays counted
        block = self._blocks[h] = _Block(parent, kv, nbytes, tail=tail)
        if tail is not None:
            self._tails.setdefault(parent or self.root, set()).add(h)
        if parent is not None:
            self._blocks[parent].children += 1
        self.stats.bytes += nbytes
        self.stats.entries = len(self._blocks)
        return block

    # -- insertion ----------------------------------------------------------------
    def insert(self, tokens: list[int], cache: list[Any]) -> None:
        """Remember the keys/values of ``tokens``, held by a batch-1 per-layer ``cache``.

        ``cache`` must cover the tokens in order; in block mode only the tokens
        the keys/values really cover (the cache's offset) are stored.
        """
        if self.block_mode:
            tokens = tokens[: min(c.offset for c in cache)]
        if not tokens or self.stats.budget_bytes <= 0:
            return
        if self.block_mode:
            self._insert_blocks(tokens, cache)
        else:
            self._insert_snapshot(tokens, cache)
        self._evict_to(self.stats.budget_bytes)

    def _insert_blocks(self, tokens: list[int], cache: list[Any]) -> None:
        parent = None
        for i, h in enumerate(self.block_hashes(tokens)):
            if h in self._blocks:
                self._blocks.move_to_end(h)
            else:
                start, end = i * self.block_size, (i + 1) * self.block_size
                kv = [(self._store(c.keys[..., start:end, :]), self._store(c.values[..., start:end, :])) for c in cache]
                self._add_block(h, parent, kv)
                if self.disk is not None:
                    self.disk.save(h, parent, tokens[start:end], kv)
            parent = h
        rest = len(tokens) % self.block_size
        if rest:
            tail = tuple(tokens[-rest:])
            key = _digest((parent or self.root) + b"tail", list(tail))
            if key in self._blocks:
                self._blocks.move_to_end(key)
            else:
                start = len(tokens) - rest
                kv = [(self._store(c.keys[..., start : start + rest, :]),
                       self._store(c.values[..., start : start + rest, :])) for c in cache]
                self._add_block(key, parent, kv, tail)

    def _insert_snapshot(self, tokens: list[int], cache: list[Any]) -> None:
        key = _digest(self.root, tokens)
        if key in self._snapshots:
            self._snapshots.move_to_end(key)
            return
        states = [(type(c), _copy_state(c.state)) for c in cache]
        mx.eval([s for _, s in states])
        nbytes = sum(_state_bytes(s) for _, s in states)
        self._snapshots[key] = _Snapshot(len(tokens), states, nbytes)
        self.stats.bytes += nbytes
        self.stats.entries = len(self._snapshots)

    def _store(self, x: mx.array) -> Any:
        """A block slice, copied; quantized in groups along head_dim (or along tokens when head_dim is small)."""
        x = mx.contiguous(x)
        if self.kv_bits:
            swap = x.shape[-1] % 32 != 0
            if swap:
                x = x.swapaxes(-1, -2)
            if x.shape[-1] % 32 == 0:
                group = 64 if x.shape[-1] % 64 == 0 else 32
                x = (*mx.quantize(x, group_size=group, bits=self.kv_bits), group, swap)
            elif swap:
                x = x.swapaxes(-1, -2)
        mx.eval(x)
        return x

    def _load(self, stored: Any) -> mx.array:
        if isinstance(stored, tuple):
            w, scales, biases, group, swapped = stored
            x = mx.dequantize(w, scales, biases, group_size=group, bits=self.kv_bits)
            return x.swapaxes(-1, -2) if swapped else x
        return stored

    # -- eviction -------------------------------------------------------------------
    def _evict_to(self, limit: int) -> None:
        store = self._blocks if self.block_mode else self._snapshots
        while self.stats.bytes > limit and store:
            victim = next((h for h, b in store.items() if not getattr(b, "children", 0)), None)
            if victim is None:
                break
            entry = store.pop(victim)
            self.stats.bytes -= entry.nbytes
            self.stats.evictions += 1
            parent = getattr(entry, "parent", None)
            if parent is not None and parent in store:
                store[parent].children -= 1
            if getattr(entry, "tail", None) is not None:
                self._tails[parent or self.root].discard(victim)
        self.stats.entries = len(store)

    def shrink(self, bytes_needed: int) -> int:
        """Evict until ``bytes_needed`` bytes are freed (or the cache is empty); returns bytes freed."""
        before = self.stats.bytes
        self._evict_to(max(0, before - bytes_needed))
        return before - self.stats.bytes

    def clear(self) -> None:
        """Forget every cached prefix, on disk too."""
        if self.disk is not None:
            self.disk.clear()
        self._blocks.clear()
        self._tails.clear()
        self._snapshots.clear()
        self.stats.bytes = self.stats.entries = 0

def model_fingerprint(loaded: Any) -> str:
    """What identifies the weights a cached key/value belongs to: folder, config, weight files, dtype."""
    path = Path(getattr(loaded, "path", "") or ".")
    weights = sorted((f.name, f.stat().st_size, int(f.stat().st_mtime)) for f in path.glob("*.safetensors"))
    return json.dumps({"path": str(path.resolve()), "config": getattr(loaded, "config", {}), "weights": weights,
                       "dtype": str(getattr(getattr(loaded, "backend", None), "compute_dtype", ""))},
                      sort_keys=True, default=str)


def build_prefix_cache(loaded: Any, config: Any) -> PrefixCache:
    """The prefix cache an engine config asks for (``config``: an ``EngineConfig``)."""
    budget = config.cache_memory_bytes
    if budget is None:
        budget = int(available_memory_bytes() * config.cache_memory_fraction)
    fingerprint = model_fingerprint(loaded)
    template = make_prompt_cache(loaded.model)
    disk = None
    if config.kv_cache_dir and all(type(c) is KVCache for c in template):
        disk = BlockDiskStore(Path(config.kv_cache_dir), fingerprint, config.kv_cache_dir_bytes)
    return PrefixCache(template, budget, fingerprint, config.prefix_block_size, config.kv_cache_bits, disk)
