"""A run's metrics file: one JSONL line per row, optionally the same scalars as TensorBoard
events (``tb/``); rank 0 alone writes. Shared by the RL loop and the baselines.

    metrics = MetricsLog(out, rank=0, tensorboard=True, progress=("iteration", "acc/val"))
    metrics.write({"iteration": 1, "acc/val": 0.5})
    metrics.truncate(iteration=1)   # on resume: drop the rows a killed run wrote after it
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class MetricsLog:
    def __init__(
        self, out: Path, *, rank: int, tensorboard: bool = False, progress: Sequence[str] = ()
    ) -> None:
        self.out, self.path = out, out / "metrics.jsonl"
        self.rank, self.tensorboard, self.progress = rank, tensorboard, tuple(progress)
        self._tb: Any = None  # TensorBoard writer, opened on the first row

    def reset(self) -> None:
        """A fresh run: forget the rows of a previous one in the same directory."""
        if self.rank == 0:
            self.path.unlink(missing_ok=True)

    def truncate(self, iteration: int) -> None:
        """Drop the rows of iterations after ``iteration`` (a killed run wrote them)."""
        if self.rank != 0 or not self.path.is_file():
            return
        rows = [json.loads(x) for x in self.path.read_text().splitlines() if x.strip()]
        kept = [r for r in rows if r["iteration"] <= iteration]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def write(self, row: dict[str, Any]) -> None:
        """Append ``row``; log its ``progress`` keys at INFO when any are given."""
        if self.rank != 0:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tensorboard:
            if self._tb is None:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.out / "tb"))
            for key, value in row.items():
                if isinstance(value, int | float) and key not in ("iteration", "version"):
                    self._tb.add_scalar(key, value, global_step=int(row["iteration"]))
            self._tb.flush()
        if self.progress:
            log.info("  ".join(f"{k}={row[k]:.4g}" for k in self.progress if k in row))
