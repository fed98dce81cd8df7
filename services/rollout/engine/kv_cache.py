"""A forked, pre-reserved KV cache for the torch engine's decode loop.

transformers' ``DynamicCache`` grows by ``torch.cat`` every step, copying the whole cache
each token — with K forked rows per prefix that copy dominates decoding on CPU. After the
prefill, ``fork_reserved(cache, rows, extra)`` replaces every layer by a ``ReservedLayer``:
row r gets a copy of prefix ``rows[r]``'s keys/values in a buffer with room for ``extra``
more positions, and each step writes its new key/value in place (views are returned).

When rows finish, ``compact(cache, order)`` keeps rows ``order`` (new row p := old row
``order[p]``). ``swap_remove_order(keep)`` builds an order that leaves every kept row
in place except those past the new end, which move into the freed slots: each finished row
costs one row copy instead of a copy of the whole cache. A row's computation does not depend
on its place in the batch, so the order changes no sampled token (the engine's tests check
it against a one-row-at-a-time reference).
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer


def _grown(buf: torch.Tensor, capacity: int) -> torch.Tensor:
    """``buf`` (B, H, T, D) copied into a buffer of ``capacity`` positions."""
    out = buf.new_empty((buf.shape[0], buf.shape[1], capacity, buf.shape[3]))
    out[:, :, : buf.shape[2]] = buf
    return out


class ReservedLayer(DynamicLayer):
    """A DynamicLayer whose keys/values live in a pre-allocated buffer (B, H, capacity, D)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, capacity: int) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # transformers: unannotated
        self.device = keys.device
        batch, heads, length, dim = keys.shape
        self._kbuf = keys.new_empty((batch, heads, capacity, dim))
        self._vbuf = values.new_empty((batch, values.shape[1], capacity, values.shape[-1]))
        self._kbuf[:, :, :length] = keys
        self._vbuf[:, :, :length] = values
        self._len = length
        self.keys, self.values = self._kbuf[:, :, :length], self._vbuf[:, :, :length]
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        new = key_states.shape[-2]
        if self._len + new > self._kbuf.shape[2]:  # out of room: grow (rare: capacity is exact)
            capacity = max(self._len + new, 2 * self._kbuf.shape[2])
            self._kbuf = _grown(self._kbuf, capacity)
            self._vbuf = _grown(self._vbuf, capacity)
        self._kbuf[:, :, self._len : self._len + new] = key_states
        self._vbuf[:, :, self._len : self._len + new] = value_states
        self._len += new
        self.keys, self.values = self._kbuf[:, :, : self._len], self._vbuf[:, :, : self._len]
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep only rows ``indices`` (drops finished rows)."""
        self._kbuf, self._vbuf = self._kbuf[indices], self._vbuf[indices]
        self.keys, self.values = self._kbuf[:, :, : self._len], self._vbuf[:, :, : self._len]

    def keep_rows(self, order: list[int]) -> None:
        """Keep rows ``order`` in place: only rows whose slot changes are copied."""
        moves = [(p, src) for p, src in enumerate(order) if p != src]
        if moves:
            dst = torch.tensor([p for p, _ in moves], device=self.device)
            src = torch.tensor([q for _, q in moves], device=self.device)
            self._kbuf[dst, :, : self._len] = self._kbuf[src, :, : self._len]
            self._vbuf[dst, :, : self._len] = self._vbuf[src, :, : self._len]
        self._kbuf, self._vbuf = self._kbuf[: len(order)], self._vbuf[: len(order)]
        self.keys, self.values = self._kbuf[:, :, : self._len], self._vbuf[:, :, : self._len]


def swap_remove_order(keep: list[int]) -> list[int]:
    """New row p := old row ``order[p]``: kept rows below ``len(keep)`` stay where they are,
    kept rows past it fill the freed slots (``keep``: ascending row indices)."""
    n = len(keep)
    kept = set(keep)
    freed = [i for i in range(n) if i not in kept]
    movers = [i for i in keep if i >= n]
    order = list(range(n))
    for slot, src in zip(freed, movers, strict=True):
        order[slot] = src
    return order


def compact(cache: object, order: list[int]) -> None:
    """In place: row p of every layer := row ``order[p]``; ``len(order)`` rows remain."""
    index: torch.Tensor | None = None
    for layer in cache.layers:  # type: ignore[attr-defined]
        if isinstance(layer, ReservedLayer):
            layer.keep_rows(order)
            continue
        if index is None:  # sliding-window etc.: a plain index-select
            index = torch.tensor(order, device=layer.keys.device)
        layer.batch_select_indices(index)


def fork_reserved(cache: object, rows: torch.Tensor, extra: int) -> None:
    """In place: row r of every layer := prefix ``rows[r]``, with room for ``extra`` tokens."""
    layers = cache.layers  # type: ignore[attr-defined]
    for i, layer in enumerate(layers):
        if type(layer) is not DynamicLayer:  # sliding-window etc.: plain index-select fork
            layer.batch_select_indices(rows)
            continue
        assert layer.keys is not None and layer.values is not None  # a filled layer
        keys, values = layer.keys[rows], layer.values[rows]  # (R, H, L, D)
        layers[i] = ReservedLayer(keys, values, keys.shape[2] + extra)
