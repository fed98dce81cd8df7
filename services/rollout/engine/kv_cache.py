"""A forked, pre-reserved KV cache for the torch engine's decode loop.

transformers' ``DynamicCache`` grows by ``torch.cat`` every step, copying the whole cache
each token — with K forked rows per prefix that copy dominates decoding on CPU. After the
prefill, ``fork_reserved(cache, rows, extra)`` replaces every layer by a ``ReservedLayer``:
row r gets a copy of prefix ``rows[r]``'s keys/values in a buffer with room for ``extra``
more positions, and each step writes its new key/value in place (views are returned).
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
        super().__init__()
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


def fork_reserved(cache: object, rows: torch.Tensor, extra: int) -> None:
    """In place: row r of every layer := prefix ``rows[r]``, with room for ``extra`` tokens."""
    layers = cache.layers  # type: ignore[attr-defined]
    for i, layer in enumerate(layers):
        if type(layer) is not DynamicLayer:  # sliding-window etc.: plain index-select fork
            layer.batch_select_indices(rows)
            continue
        keys, values = layer.keys[rows], layer.values[rows]  # (R, H, L, D)
        layers[i] = ReservedLayer(keys, values, keys.shape[2] + extra)
