"""bench/real_lm.py end to end at the smallest sizes, on a micro model instead of SmolLM2 (the
path is the same: SFT, each method in its own process through the reward service and a
rollout replica, test Pass@1, the value analysis and the report)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.runs import ROOT


@pytest.mark.slow
def test_pipeline_writes_the_report(tmp_path: Path, micro_model: Path) -> None:
    doc = tmp_path / "real_lm.md"
    cmd = [sys.executable, "-m", "bench.real_lm", "--model", str(micro_model),
           "--out", str(tmp_path / "run"), "--doc", str(doc), "--sft-steps", "2",
           "--sft-batch", "4", "--iterations", "2", "--prompts", "2", "--responses", "2",
           "--k", "2", "--eval-every", "1", "--val-problems", "2", "--test-problems", "4",
           "--test-seeds", "1", "--value-prompts", "1", "--truth-k", "2",
           "--timing-k", "3", "--timing-iterations", "1", "--engine", "torch"]  # fmt: skip
    subprocess.run(cmd, check=True, cwd=ROOT, timeout=900)
    text = doc.read_text()
    for row in ("| SFT |", "| GRPO |", "| PPO |", "| VinePPO |"):
        assert row in text
    assert "VinePPO / PPO at K = 2: iteration time" in text
    assert "At K = 3 (1 VinePPO iterations" in text  # the timing run at --timing-k
    timing = (tmp_path / "run" / "k3" / "vine" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(timing[-1])["iteration"] == 1
    sft = json.loads((tmp_path / "run" / "sft" / "test.json").read_text())
    assert all(json.loads((tmp_path / "run" / a / "result.json").read_text())["sft Pass@1"]
               == sft["test"] for a in ("grpo", "ppo", "vine"))  # fmt: skip  # tested once
    assert "| PPO critic |" in text  # the value analysis on the PPO policy's steps
    assert "Policy selected on validation" in text and "the whole pipeline took" in text
    assert doc.with_suffix(".png").stat().st_size > 1000
    for algo in ("grpo", "ppo", "vine"):
        res = json.loads((tmp_path / "run" / algo / "result.json").read_text())
        assert 0 <= res["test Pass@1"] <= 1 and res["train peak RSS (MB)"] > 100
        rows = (tmp_path / "run" / algo / "metrics.jsonl").read_text().splitlines()
        assert json.loads(rows[-1])["iteration"] == 2


def test_critic_line_averages_the_explained_variance_per_iteration() -> None:
    from bench.real_lm_report import critic_line

    rows = [
        {"iteration": 0, "critic/warmup_ev_last": 0.25},
        {"iteration": 1, "critic/ev_returns": 0.1},
        {"iteration": 2},  # no returns variance: nothing logged
        {"iteration": 3, "critic/ev_returns": 0.4},
    ]
    text = critic_line(rows)[-1]
    assert "mean 0.250 over the 2 iterations, last 0.400 (after its warm-up: 0.250)." in text
    assert critic_line([{"iteration": 1}]) == []
