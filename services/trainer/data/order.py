"""The seeded order in which a run visits its training prompts (the RL loop and the baselines)."""

from __future__ import annotations

import random


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
