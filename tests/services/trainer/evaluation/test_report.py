"""A report built from two short real runs (vine and ppo through the real services), with the
PPO run's test evaluation (best checkpoint by validation) and value analysis: the page
references only files that exist and every PNG decodes."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from services.cli import app
from services.trainer.client.local_services import run_services
from services.trainer.config import load_config
from services.trainer.rl.loop import RLTrainer

pytestmark = [pytest.mark.slow, pytest.mark.server]
runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_sft(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.services.trainer.tiny_sft import tiny_sft_model

    return tiny_sft_model(tmp_path_factory)


def _short_run(model: Path, out: Path, algo: str) -> Path:
    cfg = load_config(
        preset="tiny-cpu",
        overrides=[
            f"algo={algo}",
            "iterations=1",
            f"model.policy={model}",
            f"output_dir={out}",
            "rollout.prompts_per_iteration=2",
            "rollout.responses_per_prompt=2",
            "rollout.max_response_tokens=40",
            "ppo.mini_batch_size=4",
            "ppo.micro_batch_size=4",
            "vine.k=2",
            "eval.every=1",
            "eval.num_problems=2",
            "eval.max_response_tokens=40",
        ],
    )
    out.mkdir(parents=True)
    (out / "config.json").write_text(cfg.model_dump_json())
    (out / "command.txt").write_text(f"vineppo train --algo {algo} --output-dir {out}\n")

    async def main() -> None:
        async with run_services(model, out / "policies", job_size=4) as services:
            await RLTrainer(cfg, services, progress=False).run()

    asyncio.run(main())
    return out


def test_report_of_two_real_runs_references_only_existing_decodable_files(
    tiny_sft: Path, tmp_path: Path
) -> None:
    from PIL import Image

    vine = _short_run(tiny_sft, tmp_path / "vine", "vine")
    ppo = _short_run(tiny_sft, tmp_path / "ppo", "ppo")
    best = json.loads((ppo / "best" / "best.json").read_text())  # the loop kept its best
    assert best["version"] in (0, 1)
    res = runner.invoke(
        app,
        [
            "eval",
            "--run",
            str(ppo),
            "--select-on",
            "validation",
            "--seeds",
            "2",
            "--num-problems",
            "2",
        ],
    )
    assert res.exit_code == 0, res.output
    ev = json.loads((ppo / "eval-test.json").read_text())
    assert ev["selection"]["version"] == best["version"] and len(ev["per_seed"]) == 2
    res = runner.invoke(
        app,
        [
            "analyze-values",
            "--run",
            str(ppo),
            "--num-prompts",
            "2",
            "--responses",
            "2",
            "--truth-k",
            "4",
            "--top-action-states",
            "1",
            "--candidates",
            "2",
        ],
    )
    assert res.exit_code == 0, res.output
    metrics = json.loads((ppo / "value-analysis" / "analysis.json").read_text())["metrics"]
    # the run's critic; GRPO and RLOO share one leave-one-out group baseline
    assert set(metrics) == {
        "VinePPO K=2",
        "VinePPO K=2, reusing returns",
        "PPO critic",
        "GRPO/RLOO",
    }
    res = runner.invoke(
        app, ["report", str(vine), str(ppo), "--out", str(tmp_path / "site" / "report.html")]
    )
    assert res.exit_code == 0, res.output
    page = (tmp_path / "site" / "report.html").read_text()
    refs = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert len(refs) == 7  # 3 accuracy plots, the train reward + 3 value plots of the ppo run
    for ref in refs:
        path = tmp_path / "site" / ref
        assert path.is_file(), ref
        with Image.open(path) as img:
            img.load()
            assert img.format == "PNG" and min(img.size) > 100
    assert "Value prediction" in page and "PPO critic" in page
    assert "test Pass@1" in page and "vineppo eval --run" in page
