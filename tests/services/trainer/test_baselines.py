"""Integration: ``vineppo train --algo grpo|rloo|restem|dpo_positive`` on the built-in task.

One tiny SFT model (module scope, ~20 s) serves all four; each method runs a short budget
through the real reward service (uvicorn on loopback, sandboxed grader) and in-process
rollout workers, via the real CLI command, and its metrics land in the RL loop's JSONL
schema (``iteration``, ``version``, ``algo``, ``reward/mean``, ``acc/val``, ``time/...``)
that ``report.py`` reads.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from services.cli import app
from services.trainer.report import load_run, write_report
from services.trainer.sft import run_sft
from services.trainer.sft_config import SFTConfig

pytestmark = [pytest.mark.slow, pytest.mark.server]

TASK = {"min_steps": 2, "max_steps": 2}  # two operations: a 60-step SFT gets some right


@pytest.fixture(scope="module")
def sft_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sft")
    cfg = SFTConfig(dataset="arithmetic", arithmetic=TASK, from_scratch=True,
                    output_dir=str(out), lr=3e-3, batch_size=16, max_steps=60,
                    train_problems=400, val_problems=4, eval_every=60, eval_max_tokens=32,
                    max_seq_len=96)  # fmt: skip
    return run_sft(cfg, progress=False).best_dir


COMMON = ["iterations=1", "rollout.max_response_tokens=32", "eval.every=1",
          "eval.num_problems=4", "eval.max_response_tokens=32",
          "rollout.temperature=1.0"]  # fmt: skip
PER_ALGO = {
    "grpo": ["rollout.prompts_per_iteration=4", "rollout.responses_per_prompt=2",
             "ppo.mini_batch_size=8", "ppo.micro_batch_size=8", "optim.lr=1e-4"],
    "rloo": ["rollout.prompts_per_iteration=4", "rollout.responses_per_prompt=2",
             "ppo.mini_batch_size=8", "ppo.micro_batch_size=8", "optim.lr=1e-4"],
    "restem": ["restem.train_prompts=16", "restem.samples_per_prompt=8", "restem.epochs=2",
               "restem.batch_size=8", "restem.micro_batch_size=8", "restem.lr=1e-4"],
    "dpo_positive": ["rollout.prompts_per_iteration=16", "dpo.samples_per_prompt=8",
                     "dpo.pairs_per_prompt=4", "dpo.epochs=1", "dpo.batch_size=8",
                     "dpo.micro_batch_size=8", "optim.lr=1e-5"],
}  # fmt: skip


def _train(model: Path, out: Path, algo: str) -> list[dict[str, object]]:
    args = ["train", "--algo", algo, "--preset", "tiny-cpu", "--output-dir", str(out)]
    sets = [f"model.policy={model}", f"arithmetic={json.dumps(TASK)}", *COMMON, *PER_ALGO[algo]]
    for s in sets:
        args += ["--set", s]
    res = CliRunner().invoke(app, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output[-3000:]
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def _check_schema(rows: list[dict[str, object]], algo: str) -> None:
    assert [r["iteration"] for r in rows] == [0, 1]
    assert "acc/val" in rows[0] and rows[0]["version"] == 0
    last = rows[-1]
    for key in ("version", "reward/mean", "acc/val", "time/iteration", "time/generate"):
        assert isinstance(last[key], int | float) and math.isfinite(float(last[key])), key
    assert 0.0 <= float(last["reward/mean"]) <= 1.0 and 0.0 <= float(last["acc/val"]) <= 1.0
    assert last.get("algo") == algo


@pytest.mark.parametrize("algo", ["grpo", "rloo", "restem", "dpo_positive"])
def test_short_run_through_real_services(sft_model: Path, tmp_path: Path, algo: str) -> None:
    out = tmp_path / algo
    rows = _train(sft_model, out, algo)
    _check_schema(rows, algo)
    last = rows[-1]
    if algo in ("grpo", "rloo"):
        assert last["version"] == 1 and math.isfinite(float(last["loss/policy"]))
        assert (out / "policies" / "policy-v1").is_dir()
    elif algo == "restem":
        assert int(last["restem/kept"]) > 0  # some sampled answers were correct and trained on
        assert 1 <= int(last["restem/selected_epoch"]) <= int(last["restem/epochs_run"]) <= 2
        assert int(last["version"]) >= int(last["restem/epochs_run"])  # each epoch was served
        assert (out / "best" / "config.json").is_file()
        assert math.isfinite(float(last["loss/sft"]))
    else:
        assert int(last["dpo/pairs"]) > 0 and last["version"] == 1
        assert last["dpo/beta"] == 0.3 and last["dpo/lam"] == 50.0
        for key in ("loss/dpo", "kl/ref", "dpo/penalty", "dpo/margin"):
            assert math.isfinite(float(last[key])), key
        assert float(last["loss/dpo"]) > 0.0  # −log σ(·) is positive
    page = write_report([load_run(out)], tmp_path / "report.html")  # the report reads it
    assert page.is_file() and (tmp_path / "report-acc-iter.png").is_file()
