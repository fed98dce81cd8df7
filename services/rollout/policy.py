"""The one place a replica's policy version changes: check, read, verify, swap, under one lock.

Both weight-push paths, ``POST /v1/weights`` (``service.py``) and the queue's weights
announcement (``worker.py``), call ``PolicyGate.of(engine).load(...)``. There is one gate per
engine object, so two pushes to one replica (two HTTP pushes, or an HTTP push and an
announcement) run one after the other, and each checks the version against the one served
*after* the previous swap. Without that, a slow v+10 and a fast v+11 both passed the "no
older version" check and the replica ended serving v+10.

Under the lock, in this order (a refusal at any step leaves the engine as it was):

1. the version: older than the one served is refused (409 ``stale_version``) before a byte
   is read, unless ``supersede`` (a later trainer generation rolling replicas back);
2. the read: ``read()`` (``engine.weights.read_weights``: root confinement, regular files
   only, SHA-256 per shard, size cap), in a thread;
3. the same version again: a no-op when the shards are byte-identical (by SHA-256) to the
   ones served, else refused (409 ``version_conflict``), so ``policy_version`` keeps naming
   one set of weights; ``supersede`` replaces them;
4. finiteness (``check_finite``: 400 ``non_finite_weights``), then the engine's own checks
   (names, shapes) and the swap; after it the engine's value cache is emptied.

``loading`` is the version being loaded (None when idle); ``error`` is set only when the
engine failed *during* a swap (it may hold part of the new weights: not ready until a load
succeeds). A refused push changes neither.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from typing import ClassVar

from services.rollout.engine.base import Engine, WeightsError
from services.rollout.engine.weights import VerifiedWeights, WeightsRefused, check_finite
from services.rollout.value_cache import ValueCache


class PolicyGate:
    """Serialises weight loads of one engine and remembers the digests of what it serves."""

    _gates: ClassVar[weakref.WeakKeyDictionary[object, PolicyGate]] = weakref.WeakKeyDictionary()

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.sha256: dict[str, str] | None = None  # None: start-up weights (never pushed)
        self.loading: int | None = None
        self.error: str | None = None
        self._lock = asyncio.Lock()

    @classmethod
    def of(cls, engine: Engine) -> PolicyGate:
        """The gate of ``engine`` (created on first use; one per engine object)."""
        gate = cls._gates.get(engine)
        if gate is None:
            gate = cls._gates[engine] = cls(engine)
        return gate

    def check_version(self, version: int, *, supersede: bool = False) -> None:
        """Refuse a version older than the one served (unless ``supersede``)."""
        served = self.engine.version
        if version < served and not supersede:
            raise WeightsRefused(
                f"version {version} is older than the version {served} this replica serves",
                409,
                "stale_version",
            )

    async def load(
        self, version: int, read: Callable[[], VerifiedWeights], *, supersede: bool = False
    ) -> bool:
        """Load ``version`` from what ``read()`` returns; True if the engine now holds new
        weights, False for a byte-identical re-push of the version served (nothing done).

        Raises ``WeightsRefused`` / ``WeightsError`` (nothing changed) or whatever the engine
        raised mid-swap (``error`` is then set)."""
        async with self._lock:
            self.check_version(version, supersede=supersede)
            self.loading = version
            try:
                weights = await asyncio.to_thread(read)
                if version == self.engine.version:
                    if self.sha256 is not None and weights.sha256 == self.sha256:
                        return False
                    if not supersede:
                        raise WeightsRefused(
                            f"version {version} is the version served, with different weights"
                            " (or weights not pushed at start-up): push a newer version",
                            409,
                            "version_conflict",
                        )
                await asyncio.to_thread(check_finite, weights)
                try:
                    await self.engine.load_weights(version, weights)
                except WeightsError:
                    raise  # the engine's checks refused the tensors: nothing was copied
                except BaseException as exc:
                    self.error = f"loading v{version}: {type(exc).__name__}: {exc}"
                    raise
                self.sha256, self.error = dict(weights.sha256), None
                ValueCache.forget(self.engine)  # nothing cached is the new policy's
                return True
            finally:
                self.loading = None
