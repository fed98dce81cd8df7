"""The :class:`JobQueue` interface every backend implements, and what they share.

Semantics (identical in both backends, tested by the same suite):

- One job stream per policy version. ``submit`` appends to the stream of
  ``job.policy_version``; a worker ``fetch``-es only from the stream of the version it has
  loaded, so a job for version N can never be delivered to a worker holding N-1.
- A delivery stays pending (owned by its consumer) until ``ack``. ``reclaim`` moves
  deliveries idle for at least ``min_idle_ms`` to another consumer (a dead worker's jobs);
  ``touch`` resets the idle clock of deliveries a live worker is still working on.
- Delivery is at-least-once; results are exactly-once: ``put_result`` stores the first
  result per ``job_id`` (with a TTL) and ignores later ones, so a retried or reclaimed job
  never produces a second result.
- Result hygiene: once the caller has what it needs, ``release_results`` keeps each result
  only ``read_ttl_s`` more, and marks an id without a result for as long, so a late answer
  to an abandoned attempt is dropped, not stored for ``result_ttl_s``.
- Consumer hygiene: ``prune_consumers`` removes a version's consumers that are idle past a
  bound, hold no pending delivery and have no live heartbeat (replicas that died).
- ``depth(version)`` = jobs not yet acked (unread + pending).
- Weights: ``publish_weights`` sets ``weights:latest`` and notifies subscribers.
- Replicas: ``heartbeat`` stores a record with a TTL; ``list_replicas`` returns live ones.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Protocol, runtime_checkable

from shared.schemas import Job, JobResult, ReplicaHeartbeat, WeightsAnnouncement

Delivery = tuple[str, Job]
"""(delivery_id, job): the id to ``ack``/``touch``; it names the version stream too."""

DEFAULT_RESULT_TTL_S = 24 * 3600.0
"""How long a result nobody has released is kept (its caller may have died)."""
DEFAULT_READ_TTL_S = 60.0
"""How long a released result (or the marker of an abandoned job id) is kept."""


def format_delivery_id(version: int, entry_id: str) -> str:
    """``"<version>/<entry id>"``: a delivery id that names its version stream."""
    return f"{version}/{entry_id}"


def parse_delivery_id(delivery_id: str) -> tuple[int, str]:
    """Inverse of :func:`format_delivery_id`; raises ``ValueError`` on a malformed id."""
    version, sep, entry = delivery_id.partition("/")
    if not sep or not entry or not version.isdigit():
        raise ValueError(f"not a delivery id: {delivery_id!r}")
    return int(version), entry


@runtime_checkable
class JobQueue(Protocol):
    """The work queue between the trainer and the rollout workers."""

    prefix: str

    async def submit(self, job: Job) -> str:
        """Append ``job`` to the stream of ``job.policy_version``; return its entry id."""
        ...

    async def fetch(
        self, version: int, consumer: str, count: int = 1, block_ms: int = 1000
    ) -> list[Delivery]:
        """Up to ``count`` new jobs of ``version`` for ``consumer``, waiting ≤ ``block_ms``."""
        ...

    async def ack(self, delivery_id: str) -> None:
        """The delivery is done (its result is stored): remove it from the queue."""
        ...

    async def reclaim(
        self, version: int, consumer: str, min_idle_ms: int, count: int = 16
    ) -> list[Delivery]:
        """Take over deliveries of ``version`` idle ≥ ``min_idle_ms`` (their worker died)."""
        ...

    async def touch(self, consumer: str, delivery_ids: Sequence[str]) -> None:
        """Reset the idle time of deliveries ``consumer`` is still working on."""
        ...

    async def put_result(self, result: JobResult) -> bool:
        """Store ``result`` unless one exists for its job id; True if this one was stored."""
        ...

    async def get_results(self, job_ids: Sequence[str]) -> dict[str, JobResult]:
        """The stored results among ``job_ids`` (missing ids are absent)."""
        ...

    async def release_results(self, job_ids: Sequence[str]) -> None:
        """The caller is done with ``job_ids``: each result is kept ``read_ttl_s`` more (a late
        duplicate is still recognised and dropped), then deleted; an id without a result gets
        a marker of that lifetime, so ``put_result`` drops an answer that comes after."""
        ...

    async def wait_results(self, job_ids: Sequence[str], timeout_s: float) -> dict[str, JobResult]:
        """Wait until every id has a result or ``timeout_s`` passed; return what is there."""
        ...

    async def depth(self, version: int | None = None) -> int:
        """Jobs not yet acked, for one version or all."""
        ...

    async def drop_version(self, version: int) -> None:
        """Delete the stream of an old version (its jobs are never served)."""
        ...

    async def publish_weights(self, announcement: WeightsAnnouncement) -> None:
        """Set ``weights:latest`` and notify subscribers."""
        ...

    async def latest_weights(self) -> WeightsAnnouncement | None:
        """The last announcement, or None."""
        ...

    def subscribe_weights(self) -> AsyncIterator[WeightsAnnouncement]:
        """Announcements as they come, starting with the latest; each one's ``order``
        (generation, version) is greater than the last's."""
        ...

    async def heartbeat(self, beat: ReplicaHeartbeat, ttl_s: float) -> None:
        """Store a replica's liveness record; it disappears ``ttl_s`` after the last beat."""
        ...

    async def list_replicas(self) -> list[ReplicaHeartbeat]:
        """Live replicas (heartbeat not expired), sorted by id."""
        ...

    async def prune_consumers(self, version: int, min_idle_ms: int) -> list[str]:
        """Remove the consumers of ``version``'s stream that are idle for ``min_idle_ms`` or
        more, hold no pending delivery and have no live heartbeat (a consumer is named by its
        replica id); return their names. Atomic per consumer: a delivery is never dropped."""
        ...

    async def close(self) -> None: ...
