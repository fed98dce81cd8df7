"""`vineppo grade` as a real subprocess: one verdict line per input line, in order."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.server


def test_grade_cli_writes_one_verdict_per_line(tmp_path: Path) -> None:
    cases = tmp_path / "cases.jsonl"
    lines = [
        json.dumps({"dataset": "gsm8k", "response": "#### 18", "gold": "18"}),
        "this is not json",
        json.dumps({"dataset": "math", "response": "\\boxed{\\dfrac12}", "gold": "0.5"}),
        json.dumps({"dataset": "math", "response": "\\boxed{[1,2)}", "gold": "(1,2)"}),
        json.dumps({"dataset": "mmlu", "response": "A", "gold": "A"}),
        json.dumps({"dataset": "math", "response": "\\boxed{100000!}", "gold": "1"}),
    ]
    cases.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.jsonl"
    cmd = [sys.executable, "-m", "services.cli", "grade", "--input", str(cases), "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    verdicts = [json.loads(line) for line in out.read_text().splitlines()]
    assert [v["status"] for v in verdicts] == [
        "correct",
        "error",
        "correct",
        "incorrect",
        "error",
        "incorrect",
    ]
    assert "bad input line" in verdicts[1]["detail"]
