"""The demo pipeline end to end with a tiny budget: SFT, then PPO, GRPO, RLOO and VinePPO
through the real services, test evaluation, report and summary with numbers for each method."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from services.cli import app
from services.demo.run import BUDGETS, sft_model

pytestmark = [pytest.mark.slow, pytest.mark.server]


def test_quick_demo_writes_report_and_summary(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out), "--threads", "1"])
    assert result.exit_code == 0, result.output
    summary = (out / "summary.txt").read_text()
    for method in ("SFT", "PPO", "GRPO", "RLOO", "VinePPO"):
        line = next(x for x in summary.splitlines() if f"method={method} " in x + " ")
        assert re.search(r"test Pass@1=\d", line), line
        if method != "SFT":  # value MAE: PPO's critic, the group mean, VinePPO's MC estimate
            assert re.search(r"value MAE=\d", line), line
    page = (out / "report.html").read_text()
    images = re.findall(r'src="([^"]+)"', page)
    assert len(images) >= 3  # accuracy plots (+ value-analysis plots)
    for name in images:  # only files that exist, and each PNG decodes
        png = out / name
        assert png.is_file()
        import matplotlib.image

        assert matplotlib.image.imread(png).ndim == 3
    assert all(name in page for name in ("PPO", "GRPO", "RLOO", "VinePPO"))
    # a second run reuses the SFT model instead of retraining it
    best = out / "sft" / "best"
    stamp = (best / "model.safetensors").stat().st_mtime_ns
    assert sft_model(out, BUDGETS["quick"], retrain=False) == best
    assert (best / "model.safetensors").stat().st_mtime_ns == stamp


def test_the_committed_sft_model_is_the_one_the_full_demo_uses(tmp_path: Path) -> None:
    """data/demo-sft carries the settings it was trained with; a change of the demo's SFT
    settings must come with a rebuilt model (data/README.md), or the demo would retrain."""
    from services.demo.run import committed_sft, sft_settings

    committed = committed_sft()
    assert json.loads((committed / "sft.json").read_text()) == sft_settings(BUDGETS["full"])
    assert sft_model(tmp_path, BUDGETS["full"], retrain=False) == committed
    assert not (tmp_path / "sft").exists()  # nothing trained
    history = [json.loads(x) for x in (committed / "sft-metrics.jsonl").read_text().splitlines()]
    assert history[-1]["step"] == BUDGETS["full"].sft_steps
