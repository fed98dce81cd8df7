"""MC value estimates a replica has already computed, per policy version.

    cache = ValueCache.of(engine, max_entries=4096)       # one per engine (HTTP and queue)
    est = cache.lookup(version, key, k)                    # a ValueEstimate of k returns, or None
    cache.store(version, key, est, tokens_per_sample)

Only **seeded** requests are cached: with ``sampling.seed`` set, continuation j of a state
draws from (seed, stream, j) whatever else the request holds, so its estimate is a function
of (policy version, state, sampling parameters, stream) and a cached one is exactly what a
fresh computation would return — the first k' of k cached returns included (so a request for
fewer continuations than cached is a hit, for more a miss). An unseeded request asks for
fresh samples and is never served from the cache. A hit reports ``cached = True`` and
``num_tokens = 0`` (nothing sampled for it). The cache holds one policy, named by the caller
(`estimate_values`: the version number and the loaded shards' SHA-256, so a reload of the
same number with other weights counts as a new policy): a weight load empties it at once
(`ValueCache.forget`, called by the `PolicyGate`), a lookup under another policy too, and an
estimate stored under any other policy than the current one is dropped. It keeps
``max_entries`` states, least recently used out first.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any, ClassVar

from shared.schemas import ReturnStatus, ValueEstimate


@dataclass(frozen=True)
class _Entry:
    returns: tuple[float, ...]
    verdicts: tuple[ReturnStatus, ...]
    tokens: tuple[int, ...]  # per continuation
    terminal: bool
    out_of_budget: bool

    def take(self, k: int) -> ValueEstimate | None:
        """The estimate of the first ``k`` continuations (None: fewer are cached)."""
        exact = self.terminal or self.out_of_budget  # nothing sampled: one graded return
        if not exact and len(self.returns) < k:
            return None
        n = len(self.returns) if exact else k
        returns = list(self.returns[:n])
        return ValueEstimate(
            value=sum(returns) / n,
            returns=returns,
            verdicts=list(self.verdicts[:n]),
            num_tokens=0,
            terminal=self.terminal,
            out_of_budget=self.out_of_budget,
            cached=True,
        )


class ValueCache:
    """A bounded LRU of one policy version's value estimates, with hit/miss counters."""

    _caches: ClassVar[weakref.WeakKeyDictionary[Any, ValueCache]] = weakref.WeakKeyDictionary()

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self.version: Hashable | None = None  # the policy whose estimates are held
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()
        self.hits = self.misses = self.evictions = 0

    @classmethod
    def of(cls, engine: Any, max_entries: int) -> ValueCache:
        """The cache of ``engine``, shared by its HTTP routes and its queue worker (created on
        first use with ``max_entries``; 0 = caching off)."""
        cache = cls._caches.get(engine)
        if cache is None:
            cache = cls._caches[engine] = cls(max_entries)
        return cache

    @classmethod
    def forget(cls, engine: Any) -> None:
        """Empty ``engine``'s cache now (`PolicyGate` calls it after every weight load), so
        the old policy's estimates leave memory at the push, not at the next lookup."""
        cache = cls._caches.get(engine)
        if cache is not None:
            cache._entries.clear()
            cache.version = None

    def __len__(self) -> int:
        return len(self._entries)

    def _at(self, version: Hashable) -> None:
        if version != self.version:  # a weight push: nothing cached is this policy's
            self._entries.clear()
            self.version = version

    def lookup(self, version: Hashable, key: Hashable, k: int) -> ValueEstimate | None:
        """The cached estimate of ``key`` with ``k`` continuations under ``version``."""
        if self.max_entries <= 0:
            return None
        self._at(version)
        entry = self._entries.get(key)
        est = entry.take(k) if entry is not None else None
        if est is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return est

    def store(
        self, version: Hashable, key: Hashable, est: ValueEstimate, tokens: list[int]
    ) -> None:
        """Keep ``est`` (its continuations' token counts ``tokens``) for policy ``version``;
        one of another policy than the cache holds (a load came in between) is dropped."""
        if self.max_entries <= 0:
            return
        if self.version is None:
            self._at(version)
        elif version != self.version:
            return
        old = self._entries.get(key)
        if old is not None and len(old.returns) >= len(est.returns):
            return  # keep the longer sample
        self._entries[key] = _Entry(
            tuple(est.returns), tuple(est.verdicts), tuple(tokens), est.terminal, est.out_of_budget
        )
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
            self.evictions += 1

    def stats(self) -> dict[str, float]:
        return {
            "value_cache_hits": self.hits,
            "value_cache_misses": self.misses,
            "value_cache_entries": len(self._entries),
            "value_cache_evictions": self.evictions,
        }
