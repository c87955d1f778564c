"""The prefix cache: reuse of cache state across requests that share a token prefix.

The token sequence is cut into fixed-size blocks; block i is named by a chained hash
``h_i = H(h_{i-1}, tokens of block i)`` rooted in a fingerprint of the model (and of the request's
*namespace*, e.g. a LoRA adapter: nothing is reused across namespaces), so a hash names the whole
prefix up to that block. A model's cache is split into leaves (:mod:`.cache_layout`):

* **KV leaves** (plain ``KVCache``) are stored per block: that slice of keys/values (optionally
  quantized). Blocks are shared by every sequence that passes through them.
* **State leaves** (recurrent states, sliding windows) cannot be cut at an arbitrary token. They are
  copied whole at *checkpoints*: a checkpoint at token ``n`` sits under the last full block before
  ``n`` and holds the tokens after it (its *tail*), those tokens' keys/values for the KV leaves and
  every state leaf's value after token ``n``.

A model whose every leaf is KV keeps partial last blocks as tails too, matched token by token, so
reuse is token-exact. For other models a lookup takes the longest checkpoint whose tokens are a
prefix of the new prompt; the engine places checkpoints where conversations branch (template
boundaries from the serving layer, a stride through long prompts, the end of every prompt and
completion).

Every entry is reference-counted by the entries under it and evicted least-recently-used, leaves
first, within one byte budget; ``shrink`` lets the engine give memory back to the running batch.
At least one prompt token is always left to compute, so the last logits are fresh.
"""

from __future__ import annotations

import hashlib
import json
from array import array
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlx.core as mx
from mlx_lm.models.cache import KVCache, make_prompt_cache

from ..platform import available_memory_bytes
from .block_store import BlockDiskStore, StateShapes
from .cache_layout import CacheLayout, copy_state, restore_leaf, state_bytes


def _digest(parent: bytes, tokens: list[int] | tuple[int, ...]) -> bytes:
    return hashlib.blake2b(parent + array("i", tokens).tobytes(), digest_size=16).digest()


@dataclass
class PrefixHit:
    num_tokens: int = 0
    cache: list[Any] | None = None  # a fresh per-layer cache holding the reused prefix


@dataclass
class CacheEntry:
    """A full block (``tail`` None), a partial block (KV-only models) or a checkpoint."""

    parent: bytes | None
    kv: list[tuple[Any, Any] | None]  # per KV leaf (keys, values), each (1, heads, tokens, dim); None: no tokens
    nbytes: int
    children: int = 0
    tail: tuple[int, ...] | None = None  # tokens after the parent block (partial blocks, checkpoints)
    states: list[Any] | None = None  # per state leaf: its state after the last token (checkpoints)
    tokens: tuple[int, ...] | None = None  # a full block's tokens (KV-only models: matched token by token)
    root: bytes | None = None  # its namespace's root (None: the model's); depth-0 entries hang under it


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
    mode: str = "blocks"  # "blocks": every layer KV; "checkpoints": some layers keep a state
    checkpoints: int = 0
    checkpoint_bytes: int = 0
    restore_failures: int = 0  # hits that could not be assembled (the request prefilled cold)
    verified_restores: int = 0  # restores re-checked against a fresh prefill (--verify-cache-restores)
    restore_mismatches: int = 0

    @property
    def token_hit_rate(self) -> float:
        return self.hit_tokens / self.queried_tokens if self.queried_tokens else 0.0


@dataclass
class _Found:
    blocks: list[CacheEntry] = field(default_factory=list)
    last: CacheEntry | None = None  # the tail or checkpoint after the blocks
    tail_tokens: int = 0


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
        self.layout = CacheLayout.of(template_cache)
        self.block_mode = self.layout.all_kv
        self.block_size = block_size
        self.kv_bits = kv_bits
        self.disk = disk
        self.root = hashlib.blake2b(fingerprint.encode(), digest_size=16).digest()
        self._entries: OrderedDict[bytes, CacheEntry] = OrderedDict()
        # Every entry by the hash of the full block before it (root for none).
        self._under: dict[bytes, set[bytes]] = {}
        self.stats = PrefixCacheStats(budget_bytes=budget_bytes,
                                      mode="blocks" if self.block_mode else "checkpoints")

    # -- lookup ---------------------------------------------------------------
    def _root(self, namespace: bytes | None) -> bytes:
        return self.root if namespace is None else _digest(self.root + b"namespace" + namespace, ())

    def _disk_parent(self, parent: bytes | None, root: bytes) -> bytes | None:
        """The parent recorded on disk: a namespace's depth-0 entries name its root ('' stays the model's)."""
        return parent or (None if root == self.root else root)

    def block_hashes(self, tokens: list[int], limit: int | None = None, namespace: bytes | None = None) -> list[bytes]:
        """Chained hashes of the full blocks of ``tokens`` (at most ``limit`` tokens covered) under ``namespace``."""
        n = len(tokens) if limit is None else min(limit, len(tokens))
        hashes, parent = [], self._root(namespace)
        for start in range(0, n - n % self.block_size, self.block_size):
            parent = _digest(parent, tokens[start : start + self.block_size])
            hashes.append(parent)
        return hashes

    def lookup(self, prompt: list[int], namespace: bytes | None = None) -> PrefixHit:
        """The longest reusable prefix of ``prompt`` under ``namespace`` (always leaving one token to compute)."""
        root = self._root(namespace)
        self.stats.queries += 1
        self.stats.queried_tokens += len(prompt)
        usable = len(prompt) - 1
        chain: list[tuple[bytes, CacheEntry]] = []
        for i, h in enumerate(self.block_hashes(prompt, None if self.block_mode else usable, namespace)):
            parent = chain[-1][0] if chain else None
            tokens = prompt[i * self.block_size:][: self.block_size]
            block = self._entries.get(h) or self._from_disk(h, parent, root, tokens)
            if block is None:
                break
            chain.append((h, block))
        match = self._match_tokens if self.block_mode else self._match_checkpoint
        found = match(prompt, chain, usable, root)
        if found is None:
            return PrefixHit()
        cache = self._assemble(found)
        num_tokens = len(found.blocks) * self.block_size + found.tail_tokens
        self._evict_to(self.stats.budget_bytes)  # entries read back from disk count against the budget
        self.stats.hits += 1
        self.stats.hit_tokens += num_tokens
        return PrefixHit(num_tokens, cache)

    def _touch(self, chain: list[tuple[bytes, CacheEntry]], last_key: bytes | None) -> None:
        for h, _ in chain:
            self._entries.move_to_end(h)
        if last_key is not None:
            self._entries.move_to_end(last_key)

    def _match_tokens(self, prompt: list[int], chain, usable: int, root: bytes) -> _Found | None:
        """KV-only models: every full block, then the cached block (full or partial) after them that
        shares the most leading tokens with the rest of the prompt."""
        best, best_len = None, 0
        if len(chain) * self.block_size > usable:  # the block holding the last prompt token: used in part
            best, _ = chain.pop()
            best_len = usable - len(chain) * self.block_size
        matched = len(chain) * self.block_size
        parent = chain[-1][0] if chain else root
        for key in self._under.get(parent, ()):
            entry = self._entries[key]
            n = 0
            for a, b in zip(entry.tail if entry.tail is not None else entry.tokens or (), prompt[matched:usable]):
                if a != b:
                    break
                n += 1
            if n > best_len:
                best, best_len = key, n
        if not chain and best is None:
            return None
        self._touch(chain, best)
        return _Found([b for _, b in chain], self._entries[best] if best else None, best_len)

    def _match_checkpoint(self, prompt: list[int], chain, usable: int, root: bytes) -> _Found | None:
        """Models with state leaves: the deepest checkpoint whose whole tail continues the prompt."""
        for depth in range(len(chain), -1, -1):
            parent = chain[depth - 1][0] if depth else root
            start = depth * self.block_size
            tails = {key: self._entries[key].tail for key in self._under.get(parent, ())
                     if self._entries[key].states is not None}
            if self.disk is not None:
                tails = self.disk.checkpoints_under(self._disk_parent(parent if depth else None, root)) | tails
            best, best_len = None, -1
            for key, tail in tails.items():
                n = len(tail)
                if best_len < n and 0 < start + n <= usable and tuple(prompt[start : start + n]) == tail:
                    best, best_len = key, n
            if best is None:
                continue
            entry = self._entries.get(best) or self._checkpoint_from_disk(best, parent if depth else None, root)
            if entry is None:
                continue
            self._touch(chain[:depth], best)
            return _Found([b for _, b in chain[:depth]], entry, best_len)
        return None

    def _assemble(self, found: _Found) -> list[Any]:
        """A fresh per-layer cache holding the found blocks' keys/values and the checkpoint's states."""
        leaves: list[Any] = [None] * len(self.layout.kinds)
        n = found.tail_tokens
        for j, leaf in enumerate(self.layout.kv_leaves):
            parts = [(self._load(b.kv[j][0]), self._load(b.kv[j][1])) for b in found.blocks]
            if found.last is not None and n and found.last.kv[j] is not None:
                k, v = found.last.kv[j]
                parts.append((self._load(k)[..., :n, :], self._load(v)[..., :n, :]))
            c = KVCache()
            if parts:
                c.update_and_fetch(mx.concatenate([k for k, _ in parts], axis=2),
                                   mx.concatenate([v for _, v in parts], axis=2))
            leaves[leaf] = c
        for j, leaf in enumerate(self.layout.state_leaves):
            leaves[leaf] = restore_leaf(self.layout.types[leaf], found.last.states[j])
        return self.layout.assemble(leaves)

    def _from_disk(self, h: bytes, parent: bytes | None, root: bytes, tokens: list[int]) -> CacheEntry | None:
        if self.disk is None or (parent is not None and parent not in self._entries):
            return None
        kv = self.disk.load(h, self._disk_parent(parent, root), tokens, self.kv_bits, self._load)
        if kv is None:
            return None
        return self._add(h, CacheEntry(parent, kv, state_bytes(kv), tokens=tuple(tokens) if self.block_mode else None,
                                       root=root))

    def _checkpoint_from_disk(self, key: bytes, parent: bytes | None, root: bytes) -> CacheEntry | None:
        if self.disk is None or (parent is not None and parent not in self._entries):
            return None
        loaded = self.disk.load_checkpoint(key, self._disk_parent(parent, root), self.kv_bits, self._load)
        if loaded is None:
            return None
        tail, kv, states = loaded
        return self._add(key, CacheEntry(parent, kv, state_bytes(kv) + state_bytes(states), tail=tail, states=states,
                                         root=root))

    def _add(self, key: bytes, entry: CacheEntry) -> CacheEntry:
        self._entries[key] = entry
        self._under.setdefault(entry.parent or entry.root or self.root, set()).add(key)
        if entry.parent is not None:
            self._entries[entry.parent].children += 1
        self.stats.bytes += entry.nbytes
        if entry.states is not None:
            self.stats.checkpoints += 1
            self.stats.checkpoint_bytes += entry.nbytes
        self.stats.entries = len(self._entries)
        return entry

    # -- insertion ----------------------------------------------------------------
    def insert(self, tokens: list[int], cache: list[Any], namespace: bytes | None = None) -> None:
        """Remember under ``namespace`` the state after ``tokens``, held by a batch-1 per-layer ``cache``.

        KV leaves must cover at least ``tokens``; state leaves must be exactly after the last of
        them (only the tokens the KV leaves really cover are stored for a KV-only model).
        """
        leaves = self.layout.leaves(cache)
        kv = [leaves[i] for i in self.layout.kv_leaves]
        covered = min((c.offset for c in kv), default=len(tokens))
        if self.block_mode:
            tokens = tokens[:covered]
        elif covered < len(tokens):
            return
        if not tokens or self.stats.budget_bytes <= 0:
            return
        root = self._root(namespace)
        parent = self._insert_blocks(tokens, kv, namespace, root)
        rest = len(tokens) % self.block_size
        if rest or not self.block_mode:
            self._insert_tail(tokens, rest, parent, root, leaves, kv)
        self._evict_to(self.stats.budget_bytes)

    def _insert_tail(self, tokens: list[int], rest: int, parent: bytes | None, root: bytes, leaves: list,
                     kv: list) -> None:
        """The partial block after the last full one; a checkpoint (with the state leaves) where there are any."""
        tail = tuple(tokens[len(tokens) - rest:])
        key = _digest((parent or root) + b"tail", tail)
        if key in self._entries:
            self._entries.move_to_end(key)
        else:
            start = len(tokens) - rest
            kv_tail = [self._slice(c, start, len(tokens)) if rest else None for c in kv]
            states = None
            if not self.block_mode:
                states = [copy_state(leaves[i].state) for i in self.layout.state_leaves]
                mx.eval(states)
            self._add(key, CacheEntry(parent, kv_tail, state_bytes(kv_tail) + state_bytes(states or []),
                                      tail=tail, states=states, root=root))
            if states is not None and self.disk is not None:
                self.disk.save_checkpoint(key, self._disk_parent(parent, root), tail, kv_tail, states)

    def _insert_blocks(self, tokens: list[int], kv: list[Any], namespace: bytes | None, root: bytes) -> bytes | None:
        parent = None
        for i, h in enumerate(self.block_hashes(tokens, namespace=namespace)):
            if h in self._entries:
                self._entries.move_to_end(h)
            else:
                start, end = i * self.block_size, (i + 1) * self.block_size
                block_kv = [self._slice(c, start, end) for c in kv]
                self._add(h, CacheEntry(parent, block_kv, state_bytes(block_kv),
                                        tokens=tuple(tokens[start:end]) if self.block_mode else None, root=root))
                if self.disk is not None:
                    self.disk.save(h, self._disk_parent(parent, root), tokens[start:end], block_kv)
            parent = h
        return parent

    def _slice(self, c: KVCache, start: int, end: int) -> tuple[Any, Any]:
        return self._store(c.keys[..., start:end, :]), self._store(c.values[..., start:end, :])

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
        while self.stats.bytes > limit and self._entries:
            victim = next((h for h, e in self._entries.items() if not e.children), None)
            if victim is None:
                break
            self._remove(victim)
            self.stats.evictions += 1
        self.stats.entries = len(self._entries)

    def _remove(self, key: bytes) -> None:
        entry = self._entries.pop(key)
        self.stats.bytes -= entry.nbytes
        if entry.states is not None:
            self.stats.checkpoints -= 1
            self.stats.checkpoint_bytes -= entry.nbytes
        if entry.parent is not None and entry.parent in self._entries:
            self._entries[entry.parent].children -= 1
        under = self._under[home := entry.parent or entry.root or self.root]
        under.discard(key)
        if not under:
            del self._under[home]  # no empty sets left behind (one per namespace ever seen)

    def shrink(self, bytes_needed: int) -> int:
        """Evict until ``bytes_needed`` bytes are freed (or the cache is empty); returns bytes freed."""
        before = self.stats.bytes
        self._evict_to(max(0, before - bytes_needed))
        return before - self.stats.bytes

    def clear(self) -> None:
        """Forget every cached prefix, on disk too."""
        if self.disk is not None:
            self.disk.clear()
        self._entries.clear()
        self._under.clear()
        self.stats.bytes = self.stats.entries = self.stats.checkpoints = self.stats.checkpoint_bytes = 0


def model_fingerprint(loaded: Any) -> str:
    """What identifies the weights a cached key/value belongs to: folder, config, weight files, dtype."""
    path = Path(getattr(loaded, "path", "") or ".")
    weights = sorted((f.name, f.stat().st_size, int(f.stat().st_mtime)) for f in path.glob("*.safetensors"))
    return json.dumps({"path": str(path.resolve()), "config": getattr(loaded, "config", {}), "weights": weights,
                       "dtype": str(getattr(getattr(loaded, "backend", None), "compute_dtype", ""))},
                      sort_keys=True, default=str)


def reference_shapes(model: Any) -> StateShapes:
    """What every cache leaf of ``model`` looks like after one and two tokens (checked when loading files)."""
    cache = make_prompt_cache(model)
    layout = CacheLayout.of(cache)
    leaves = layout.leaves(cache)
    model(mx.array([[0]]), cache=cache)
    one = [copy_state(leaves[i].state) for i in layout.state_leaves]
    model(mx.array([[0]]), cache=cache)
    two = [leaves[i].state for i in layout.state_leaves]
    kv = [(leaves[i].keys[..., :1, :], leaves[i].values[..., :1, :]) for i in layout.kv_leaves]
    mx.eval(kv, one, two)
    return StateShapes.of(kv, one, two)


def build_prefix_cache(loaded: Any, config: Any) -> PrefixCache:
    """The prefix cache an engine config asks for (``config``: an ``EngineConfig``)."""
    budget = config.cache_memory_bytes
    if budget is None:
        budget = int(available_memory_bytes() * config.cache_memory_fraction)
    fingerprint = model_fingerprint(loaded)
    template = make_prompt_cache(loaded.model)
    disk = None
    if config.kv_cache_dir:
        disk = BlockDiskStore(Path(config.kv_cache_dir), fingerprint, config.kv_cache_dir_bytes,
                              reference_shapes(loaded.model))
    return PrefixCache(template, budget, fingerprint, config.prefix_block_size, config.kv_cache_bits, disk)
