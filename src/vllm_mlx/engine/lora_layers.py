"""The model's layers with LoRA updates per row (see :mod:`.lora`).

A wrapped linear layer holds every slot's A (in, r) and scale * B (r, out) stacked by slot, r the
largest rank of all adapters (a smaller rank is zero-padded: the same product); slot 0 stays zero
(rows without an adapter). :class:`AdapterRows` says which slot each row of the forward being built
uses: when no row has one the layers add nothing; when every row has the same one its update is two
plain matmuls at that adapter's own rank; mixed rows gather their A and B per row (``mx.gather_mm``).

A mixture-of-experts block (mlx-lm's ``SwitchGLU`` / ``SwitchMLP``) whose expert layers are adapted
is wrapped as a whole (:class:`AdapterRouting`): each token's routed expert e becomes s * E + e for its
row's slot s, E experts, and its expert layers (:class:`MultiLoRAExperts`) read that index both ways:
e for the model's own expert weights, s * E + e for the adapter's pair of that expert.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.switch_layers import QuantizedSwitchLinear, SwitchLinear

EXPERT_LAYERS = (SwitchLinear, QuantizedSwitchLinear)


def linear_dims(layer: nn.Module) -> tuple[int, int]:
    """(in, out) of a plain or quantized linear layer."""
    out_dims, in_dims = layer.weight.shape
    if isinstance(layer, nn.QuantizedLinear):
        in_dims = in_dims * 32 // layer.bits
    return in_dims, out_dims


def layer_dtype(layer: nn.Module) -> mx.Dtype:
    return layer.scales.dtype if isinstance(layer, (nn.QuantizedLinear, QuantizedSwitchLinear)) else layer.weight.dtype


class AdapterRows:
    """Which slot each row of the forward being built uses (set only while the runner builds it)."""

    def __init__(self) -> None:
        self.single: int | None = None  # every row uses this slot
        self.slots: mx.array | None = None  # per row (mixed rows)


class MultiLoRALinear(nn.Module):
    """A linear layer plus the LoRA update of each row's adapter (slot 0: none)."""

    def __init__(self, base: nn.Module, rows: AdapterRows, num_slots: int, rank: int):
        super().__init__()
        self.base = base
        in_dims, out_dims = linear_dims(base)
        dtype = layer_dtype(base)
        self._rows = rows
        self._a = mx.zeros((num_slots, in_dims, rank), dtype=dtype)  # stacked for rows of mixed adapters
        self._b = mx.zeros((num_slots, rank, out_dims), dtype=dtype)
        self._each: list[tuple[mx.array, mx.array] | None] = [None] * num_slots  # each slot's own A, B (its rank)

    def __call__(self, x: mx.array) -> mx.array:
        y = self.base(x)
        rows = self._rows
        if rows.single is not None:
            own = self._each[rows.single]
            if own is None:  # this adapter leaves the layer alone
                return y
            z = (x @ own[0]) @ own[1]
        elif rows.slots is not None:
            z = mx.gather_mm(mx.gather_mm(x, self._a, rhs_indices=rows.slots), self._b, rhs_indices=rows.slots)
        else:
            return y
        return y + (z if z.dtype == y.dtype else z.astype(y.dtype))

    def write(self, slot: int, a: mx.array | None, b: mx.array | None) -> None:
        """Put an adapter's A (in, r) and scale * B (r, out) into ``slot`` (None: it leaves the layer alone)."""
        self._a[slot] = 0
        self._b[slot] = 0
        self._each[slot] = None
        if a is not None:
            r = a.shape[1]
            a, b = a.astype(self._a.dtype), b.astype(self._b.dtype)
            self._a[slot, :, :r] = a
            self._b[slot, :r, :] = b
            self._each[slot] = (a, b)

    def arrays(self) -> list[mx.array]:
        return [self._a, self._b, *(x for pair in self._each if pair is not None for x in pair)]


class MultiLoRAExperts(nn.Module):
    """An expert layer (mlx-lm's ``SwitchLinear``, plain or quantized) plus each token's LoRA update for its
    row's adapter and its expert: the pair of slot s, expert e at s * E + e. Called with the indices
    :class:`AdapterRouting` made (plain expert indices when no row of the forward has an adapter)."""

    def __init__(self, base: nn.Module, rows: AdapterRows, num_slots: int, rank: int):
        super().__init__()
        self.base = base
        self._rows = rows
        self.num_experts = base.num_experts
        dtype = layer_dtype(base)
        self._a = mx.zeros((num_slots * self.num_experts, base.input_dims, rank), dtype=dtype)
        self._b = mx.zeros((num_slots * self.num_experts, rank, base.output_dims), dtype=dtype)

    def __call__(self, x: mx.array, indices: mx.array, sorted_indices: bool = False) -> mx.array:
        rows = self._rows
        if rows.single is None and rows.slots is None:
            return self.base(x, indices, sorted_indices=sorted_indices)
        # sorted by s * E + e is sorted by e only when every row has the same slot
        y = self.base(x, indices % self.num_experts, sorted_indices=sorted_indices and rows.slots is None)
        z = mx.gather_mm(x, self._a, rhs_indices=indices, sorted_indices=sorted_indices)
        z = mx.gather_mm(z, self._b, rhs_indices=indices, sorted_indices=sorted_indices)
        return y + (z if z.dtype == y.dtype else z.astype(y.dtype))

    def write(self, slot: int, a: mx.array | None, b: mx.array | None) -> None:
        """Put an adapter's per-expert A (E, r, in) and scale * B (E, out, r), as mlx-lm stores them, into
        ``slot`` (None: zeros)."""
        at = slice(slot * self.num_experts, (slot + 1) * self.num_experts)
        self._a[at] = 0
        self._b[at] = 0
        if a is not None:
            r = a.shape[1]
            self._a[at, :, :r] = a.swapaxes(-1, -2).astype(self._a.dtype)
            self._b[at, :r, :] = b.swapaxes(-1, -2).astype(self._b.dtype)

    def arrays(self) -> list[mx.array]:
        return [self._a, self._b]


class AdapterRouting(nn.Module):
    """A mixture-of-experts block (called as ``block(x, indices)``, x (B, ..., D), indices (B, ..., k))
    whose expert layers are :class:`MultiLoRAExperts`: the routed expert indices of row b's tokens
    become slot(b) * E + e."""

    def __init__(self, block: nn.Module, rows: AdapterRows, num_experts: int):
        super().__init__()
        self.block = block
        self._rows = rows
        self.num_experts = num_experts

    def __call__(self, x: mx.array, indices: mx.array) -> mx.array:
        rows = self._rows
        if rows.single is not None:
            indices = indices.astype(mx.uint32) + rows.single * self.num_experts
        elif rows.slots is not None:
            offsets = (rows.slots * self.num_experts).reshape(-1, *([1] * (indices.ndim - 1)))
            indices = indices.astype(mx.uint32) + offsets
        return self.block(x, indices)
