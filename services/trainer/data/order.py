"""The seeded order in which a run visits its training prompts, and the run's random streams
(the RL loop and the baselines)."""

from __future__ import annotations

import hashlib
import random


def stream_seed(seed: int, tag: str, index: int = 0) -> int:
    """The sampling seed of stream ``tag`` (e.g. ``"sample"``, ``"mc"``, ``"validation"``) at
    ``index`` (e.g. the iteration) of a run with seed ``seed``: a hash of the triple, below
    2**48. Streams with different tags or indices never share a seed by arithmetic (as
    ``seed + 7`` and ``2·iteration + 1`` did), only by a 48-bit hash collision."""
    digest = hashlib.blake2b(f"{tag}/{seed}/{index}".encode(), digest_size=6).digest()
    return int.from_bytes(digest, "big")


class DataOrder:
    """Seeded epochs over the training set; ``position`` is saved and restored exactly."""

    def __init__(self, n: int, seed: int, position: int = 0) -> None:
        self.n, self.seed, self.position = n, seed, position

    def take(self, count: int) -> list[int]:
        out = []
        for _ in range(count):
            epoch, offset = divmod(self.position, self.n)
            order = list(range(self.n))
            random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
            out.append(order[offset])
            self.position += 1
        return out
