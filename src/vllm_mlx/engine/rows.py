"""Arrays whose first axis is the decode batch's rows, kept aligned as rows leave and join."""

from __future__ import annotations

import mlx.core as mx


class RowArrays:
    """Named per-row arrays (pending tokens, PRNG keys, logprobs, penalty statistics, ...).

    An array some rows lack (for example penalty statistics, kept only while a
    row uses penalties) is zero-filled for those rows when two sets are joined.
    """

    def __init__(self, num_rows: int, **arrays: mx.array | None):
        self.num_rows = num_rows
        self.arrays = {name: a for name, a in arrays.items() if a is not None}

    def __getitem__(self, name: str) -> mx.array | None:
        return self.arrays.get(name)

    def __setitem__(self, name: str, value: mx.array | None) -> None:
        if value is None:
            self.arrays.pop(name, None)
        else:
            self.arrays[name] = value

    def take(self, indices: list[int]) -> "RowArrays":
        idx = mx.array(indices)
        return RowArrays(len(indices), **{name: a[idx] for name, a in self.arrays.items()})

    def join(self, other: "RowArrays") -> "RowArrays":
        joined = {}
        for name in self.arrays.keys() | other.arrays.keys():
            mine, theirs = self[name], other[name]
            if mine is None:
                mine = mx.zeros((self.num_rows, *theirs.shape[1:]), dtype=theirs.dtype)
            if theirs is None:
                theirs = mx.zeros((other.num_rows, *mine.shape[1:]), dtype=mine.dtype)
            joined[name] = mx.concatenate([mine, theirs])
        return RowArrays(self.num_rows + other.num_rows, **joined)

    def all(self) -> list[mx.array]:
        return list(self.arrays.values())
