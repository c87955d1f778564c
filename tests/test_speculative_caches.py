"""Speculative decoding's caches and draws, without an engine: rejected positions dropped from a batch
cache (rows rolled, holes in the decode batch's cache, padding every row has cut off, sliding-window
rings), and verified tokens following each row's own distribution."""

from __future__ import annotations

import mlx.core as mx
import pytest
from mlx_lm.models.cache import BatchKVCache

from vllm_mlx.engine.model_runner import drop_row_tails, in_temporal_order


def test_dropping_row_tails_leaves_each_row_with_its_accepted_positions():
    """Two rows wrote 4 positions; row 0 keeps 3 of them, row 1 keeps 1. The repaired cache must equal a
    cache that only ever held the kept positions (same keys per row, right-aligned, padding masked)."""
    mx.random.seed(0)
    base = mx.random.normal((2, 1, 5, 2))
    extra = mx.random.normal((2, 1, 4, 2))
    cache = BatchKVCache([0, 0])
    cache.update_and_fetch(base, base)
    cache.update_and_fetch(extra, extra)
    drop_row_tails([cache], [1, 3])
    keys, _ = cache.keys_and_values()
    padding, offsets = cache.left_padding.tolist(), cache.offset.tolist()
    assert offsets == [8, 6] and padding == [0, 2]
    row0 = mx.concatenate([base[0], extra[0, :, :3]], axis=1)
    row1 = mx.concatenate([base[1], extra[1, :, :1]], axis=1)
    assert mx.array_equal(keys[0, :, padding[0]:], row0) and mx.array_equal(keys[1, :, padding[1]:], row1)


@pytest.mark.parametrize("compact_at", [4, 10_000])
def test_the_decode_batch_drops_positions_in_place(compact_at, monkeypatch):
    """Random verify-like steps, drops, trims, rows leaving and joining on the decode batch's cache: after each,
    every row attends to exactly the positions it kept, in order (its mask over the cache's keys), its
    RoPE position is their count, and the row copied out holds them -- with the holes squeezed out now
    and then (``compact_at``) and never."""
    import random

    from mlx_lm.models.cache import KVCache

    import vllm_mlx.engine.decode_cache as decode_cache
    from vllm_mlx.engine.decode_cache import as_decode_caches

    monkeypatch.setattr(decode_cache, "COMPACT_HOLES", compact_at)
    rng = random.Random(3)
    mx.random.seed(3)
    made = iter(range(1, 1_000_000))

    def keys(b: int, n: int) -> mx.array:  # distinct values: a key's first element names it
        ids = mx.array([[next(made) for _ in range(n)] for _ in range(b)], dtype=mx.float32)
        return mx.stack([ids, mx.random.normal(ids.shape)], axis=-1)[:, None]  # (b, 1, n, 2)

    def single(n: int) -> tuple[KVCache, list[float]]:
        c, k = KVCache(), keys(1, n)
        c.update_and_fetch(k, k)
        return c, k[0, 0, :, 0].tolist()

    parts = [single(rng.randrange(1, 9)) for _ in range(3)]
    cache = as_decode_caches([BatchKVCache.merge([c for c, _ in parts])])[0]
    rows = [ids for _, ids in parts]
    for _ in range(60):
        op = rng.random()
        if op < 0.6:  # a verify step of width w, then each row keeps what it accepted
            w = rng.randrange(1, 5)
            k = keys(len(rows), w)
            cache.update_and_fetch(k, k)
            junk = [rng.randrange(0, w) for _ in rows]
            drop_row_tails([cache], junk)
            rows = [r + k[i, 0, :w - j, 0].tolist() for i, (r, j) in enumerate(zip(rows, junk))]
        elif op < 0.68 and min(len(r) for r in rows) > 2:  # every row drops its newest positions
            n = rng.randrange(1, min(len(r) for r in rows) - 1)
            cache.trim(n)
            rows = [r[:-n] for r in rows]
        elif op < 0.8 and len(rows) > 1:
            keep = sorted(rng.sample(range(len(rows)), rng.randrange(1, len(rows))))
            cache.filter(mx.array(keep))
            rows = [rows[i] for i in keep]
        else:
            joining = [single(rng.randrange(1, 12)) for _ in range(rng.randrange(1, 3))]
            cache.extend(BatchKVCache.merge([c for c, _ in joining]))
            rows += [ids for _, ids in joining]
        assert cache.offset.tolist() == [len(r) for r in rows]
        mask = cache.make_mask(1, return_array=True)[:, 0, 0, :-1]  # a one-token step's, less its own column
        for i, r in enumerate(rows):
            seen = [k for k, m in zip(cache.keys[i, 0, :cache._idx, 0].tolist(), mask[i].tolist()) if m]
            assert seen == r
            assert cache.extract(i).keys[0, 0, :, 0].tolist() == r
    if compact_at > 100:
        assert cache.holes is not None  # the run kept its holes


def test_padding_every_row_has_is_cut_off():
    from vllm_mlx.engine.model_runner import COMPACT_PADDING

    mx.random.seed(1)
    pad = [COMPACT_PADDING, COMPACT_PADDING + 5]
    width = COMPACT_PADDING + 20
    cache = BatchKVCache(pad)
    kv = mx.random.normal((2, 1, width, 2))
    cache.update_and_fetch(kv, kv)
    drop_row_tails([cache], [1, 2])  # row 1 is rolled by one more: every row now has >= COMPACT_PADDING
    keys, _ = cache.keys_and_values()
    assert cache.left_padding.tolist() == [0, 6] and keys.shape[2] == width - 1 - COMPACT_PADDING
    assert mx.array_equal(keys[0], kv[0, :, COMPACT_PADDING:width - 1])
    assert mx.array_equal(keys[1, :, 6:], kv[1, :, COMPACT_PADDING + 5:width - 2])


@pytest.mark.parametrize("controls", [dict(temperature=1.0), dict(temperature=0.8, top_k=4), dict(temperature=0)])
def test_verified_tokens_follow_each_rows_own_distribution(controls):
    """Speculative sampling with a certain proposer: over many rows (each its own key), the first token
    emitted is distributed as the row's distribution at position 0, and the second -- given the first
    was the proposal -- as its distribution at position 1, whatever the proposals."""
    from vllm_mlx.engine.request import SamplingParams
    from vllm_mlx.engine.sampler import BatchSamplingParams, make_rng_key
    from vllm_mlx.engine.speculative import verify_draw

    rows, vocab = 6000, 6
    base = mx.array([[2.0, 1.0, 0.5, 0.0, -1.0, 0.3], [0.1, 1.5, -0.5, 1.2, 0.0, 0.8], [0.0] * 6])
    logits = mx.broadcast_to(base[None], (rows, 3, vocab))
    greedy = controls["temperature"] == 0
    # sampled: not the most likely tokens, so refusals happen; greedy: the argmaxes, so both are kept
    drafts = mx.broadcast_to(mx.array([[0, 1]] if greedy else [[1, 3]]), (rows, 2))
    params = BatchSamplingParams.from_params([SamplingParams(**controls)] * rows, vocab)
    keys = mx.stack([make_rng_key(i) for i in range(rows)])
    accepted, final, _ = verify_draw(logits, drafts, mx.full((rows,), 2), params, keys)
    n = accepted.tolist()
    d0, d1 = drafts[0].tolist()
    first = [d0 if a >= 1 else f for a, f in zip(n, final.tolist())]
    second = [d1 if a >= 2 else f for a, f in zip(n, final.tolist()) if a >= 1]
    if greedy:
        want = mx.eye(vocab)[mx.argmax(base[:2], axis=-1)]
    else:  # the row's distribution: temperature, then top-k
        scaled = base[:2] / controls["temperature"]
        if controls.get("top_k"):
            kth = mx.sort(scaled, axis=-1)[:, -controls["top_k"]][:, None]
            scaled = mx.where(scaled < kth, float("-inf"), scaled)
        want = mx.softmax(scaled, axis=-1)
    for seen, expected in ((first, want[0].tolist()), (second, want[1].tolist())):
        assert len(seen) > 500
        freq = [seen.count(t) / len(seen) for t in range(vocab)]
        assert max(abs(f - e) for f, e in zip(freq, expected)) < 0.03, (freq, expected)


def test_sliding_window_caches_keep_each_rows_window():
    """mlx-lm's batch cache of sliding-window layers, through many multi-token steps whose rows keep
    different numbers of positions (cut with drop_row_tails) and one-token steps between them, rows of
    very different lengths: at every step each row's queries see exactly the last window of its own
    positions (the keys hold their positions, so what the mask lets through can be read)."""
    import random

    from mlx_lm.models.cache import BatchRotatingKVCache, RotatingKVCache

    window, rng = 16, random.Random(0)
    lengths = [36, 1, 9, 17, 2]
    caches = []
    for n in lengths:
        cache = RotatingKVCache(max_size=window)
        positions = mx.arange(n, dtype=mx.float32).reshape(1, 1, n, 1)
        cache.update_and_fetch(positions, positions)
        caches.append(cache)
    batch = [BatchRotatingKVCache.merge(caches)]
    nxt = list(lengths)
    for step in range(120):
        width = 5 if rng.random() < 0.6 else 1
        if width > 1:
            in_temporal_order(batch)  # as ModelRunner.verify does before a multi-token step
        mask = batch[0].make_mask(width, window_size=window, return_array=True)
        new = mx.array([[p + j for j in range(width)] for p in nxt], dtype=mx.float32)[:, None, :, None]
        keys, _ = batch[0].update_and_fetch(new, new)
        mask = mx.broadcast_to(mask, (len(nxt), 1, width, keys.shape[2]))
        for r, first in enumerate(nxt):
            for j in range(width):
                seen = sorted(int(k) for k, ok in zip(keys[r, 0, :, 0].tolist(), mask[r, 0, j].tolist()) if ok)
                assert seen == list(range(max(0, first + j - window + 1), first + j + 1)), (step, r, j)
        junk = [rng.randrange(0, width) for _ in nxt] if width > 1 else [0] * len(nxt)
        drop_row_tails(batch, junk)
        nxt = [p + width - j for p, j in zip(nxt, junk)]
