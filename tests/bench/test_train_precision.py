"""bench/train_precision.py end to end on a micro model: every precision measured in its own
process, the table written, and the lost-update column telling plain bfloat16 apart."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.runs import ROOT


def test_writes_every_precision(tmp_path: Path, micro_model: Path) -> None:
    out = tmp_path / "precision.md"
    cmd = [sys.executable, "-m", "bench.train_precision", "--model", str(micro_model),
           "--batch", "2", "--tokens", "16", "--steps", "1", "--out", str(out)]  # fmt: skip
    subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True, timeout=300)
    rows = {r["mode"]: r for r in json.loads(out.with_suffix(".json").read_text())["rows"]}
    assert set(rows) == {"float32", "mixed", "bfloat16"}
    assert all(r["step_s"] > 0 and r["peak_rss_mb"] > 10 for r in rows.values())
    assert rows["float32"]["moved_at_1e-6"] > 0.9 and rows["mixed"]["moved_at_1e-6"] > 0.9
    assert rows["bfloat16"]["moved_at_1e-6"] < 0.05
    assert "| plain bfloat16 weights |" in out.read_text()
