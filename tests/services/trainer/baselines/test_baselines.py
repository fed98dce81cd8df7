"""Integration: ``vineppo train --algo grpo|rloo|restem|dpo_positive`` on the built-in task.

One tiny SFT model (module scope, ~40 s) serves all four; each method runs a short budget
through the real reward service (uvicorn on loopback, sandboxed grader) and in-process
rollout workers, via the real CLI command, and its metrics land in the RL loop's JSONL
schema (``iteration``, ``version``, ``algo``, ``reward/mean``, ``acc/val``, ``time/...``)
that ``report.py`` reads. RestEM and DPO-Positive are killed with SIGKILL mid-run and
resumed: the resumed run writes what an uninterrupted one writes. Their prompts carry the
run's few-shot examples.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from services.cli import app
from services.trainer.evaluation.report import load_run, write_report
from services.trainer.sft.config import SFTConfig
from services.trainer.sft.train import run_sft

pytestmark = [pytest.mark.slow, pytest.mark.server]

TASK = {"min_steps": 2, "max_steps": 2}  # two operations: a 120-step SFT gets a few right


@pytest.fixture(scope="module")
def sft_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sft")
    cfg = SFTConfig(
        dataset="arithmetic",
        arithmetic=TASK,
        from_scratch=True,
        output_dir=str(out),
        lr=3e-3,
        batch_size=16,
        max_steps=120,
        train_problems=400,
        val_problems=4,
        eval_every=120,
        eval_max_tokens=32,
        max_seq_len=96,
    )
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
    "dpo_positive": ["dpo.train_prompts=16", "dpo.samples_per_prompt=16",
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
        # one offline round: 16 prompts × 8 samples from the SFT model, whatever `iterations`
        assert (last["dpo/prompts"], last["dpo/responses"]) == (16, 256)
        assert (out / "dpo-round.pt").is_file() and (out / "best" / "best.json").is_file()
        assert last["dpo/beta"] == 0.3 and last["dpo/lam"] == 50.0
        for key in ("loss/dpo", "kl/ref", "dpo/penalty", "dpo/margin"):
            assert math.isfinite(float(last[key])), key
        assert float(last["loss/dpo"]) > 0.0  # −log σ(·) is positive
    page = write_report([load_run(out)], tmp_path / "report.html")  # the report reads it
    assert page.is_file() and (tmp_path / "report-acc-iter.png").is_file()


# -- kill -9, then --resume ------------------------------------------------------------------
ROOT = Path(__file__).resolve().parents[4]
RESUME = {
    "restem": ["iterations=2", "restem.stop_on_drop=false", "restem.train_prompts=16",
               "restem.samples_per_prompt=4", "restem.epochs=2", "restem.batch_size=8",
               "restem.micro_batch_size=8", "restem.lr=1e-4"],
    "dpo_positive": ["dpo.train_prompts=16", "dpo.samples_per_prompt=16", "dpo.pairs_per_prompt=4",
                     "dpo.epochs=2", "dpo.batch_size=8", "dpo.micro_batch_size=8",
                     "optim.lr=1e-5"],
}  # fmt: skip
COMPARED = {
    "restem": ("version", "reward/mean", "restem/kept", "restem/selected_version",
               "restem/epochs_run", "loss/sft", "acc/val", "acc/val_epochs"),
    "dpo_positive": ("version", "reward/mean", "dpo/pairs", "loss/dpo", "kl/ref", "dpo/margin",
                     "dpo/penalty", "acc/val"),
}  # fmt: skip


def _cmd(model: Path, out: Path, algo: str, *extra: str) -> list[str]:
    args = [
        sys.executable,
        "-m",
        "services.cli",
        "train",
        "--algo",
        algo,
        "--preset",
        "tiny-cpu",
        "--output-dir",
        str(out),
        "--threads",
        "1",
        *extra,
    ]
    for s in [f"model.policy={model}", f"arithmetic={json.dumps(TASK)}", *COMMON, *RESUME[algo]]:
        args += ["--set", s]
    return args


def _env() -> dict[str, str]:
    dist_vars = {"MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"}
    env = {k: v for k, v in os.environ.items() if k not in dist_vars}  # this process's group
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _run(args: list[str]) -> None:
    proc = subprocess.run(args, cwd=ROOT, env=_env(), timeout=600, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]


def _rows(out: Path) -> dict[int, dict[str, object]]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len({r["iteration"] for r in rows}) == len(rows), "an iteration was written twice"
    return {int(r["iteration"]): r for r in rows}


@pytest.mark.parametrize("algo", ["restem", "dpo_positive"])
def test_kill_9_then_resume_matches_an_uninterrupted_run(
    sft_model: Path, tmp_path: Path, algo: str
) -> None:
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    _run(_cmd(sft_model, straight, algo))
    # 1) the same run, killed with SIGKILL as soon as iteration (epoch) 1 is checkpointed
    proc = subprocess.Popen(
        _cmd(sft_model, killed, algo),
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    latest = killed / "checkpoints" / "latest"
    deadline = time.monotonic() + 600
    while not (latest.is_file() and latest.read_text().strip() == "1"):
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    round_file = killed / "dpo-round.pt"
    sampled = round_file.stat().st_mtime_ns if algo == "dpo_positive" else None
    # 2) --resume continues from iteration 1 and writes the same iteration 2
    _run(_cmd(sft_model, killed, algo, "--resume"))
    a, b = _rows(straight), _rows(killed)
    assert sorted(b) == sorted(a) == [0, 1, 2]
    if algo == "restem":  # the finetune (and its checkpoint selection) ran at least once
        assert a[1]["restem/kept"] > 0 or a[2]["restem/kept"] > 0
    for it in (1, 2):
        for key in COMPARED[algo]:
            assert (key in b[it]) == (key in a[it]), (it, key)
            if key not in a[it]:  # e.g. loss/sft of a RestEM iteration that kept nothing
                continue
            assert b[it][key] == pytest.approx(a[it][key], rel=1e-5, abs=1e-7), (it, key)
    if sampled is not None:  # the round was read back, not sampled again
        assert round_file.stat().st_mtime_ns == sampled


def test_restem_and_dpo_prompts_carry_the_few_shot_examples(
    sft_model: Path, tmp_path: Path
) -> None:
    """``rollout.few_shot`` worked examples (the first training problems) precede every
    sampled and validated prompt of RestEM and DPO-Positive, exactly as in the RL loop."""
    from services.trainer.baselines.dpo import DPOPositive
    from services.trainer.baselines.restem import RestEM
    from services.trainer.config import load_config
    from shared.prompts import format_prompt

    for algo, cls in (("restem", RestEM), ("dpo_positive", DPOPositive)):
        cfg = load_config(
            preset="tiny-cpu",
            overrides=[
                f"algo={algo}",
                f"model.policy={sft_model}",
                f"output_dir={tmp_path / algo}",
                f"arithmetic={json.dumps(TASK)}",
                "rollout.few_shot=2",
            ],
        )
        run = cls(cfg, services=None, progress=False)
        shots = run.train[:2]
        ex = run.val[0]
        prompt = run.prompt(ex)
        assert prompt == format_prompt(
            ex.question,
            style=run.style,
            dataset=ex.dataset,
            tokenizer=run.tokenizer,
            few_shot=shots,
        )
        assert prompt.startswith(format_prompt(shots[0].question) + shots[0].solution)
        assert prompt.count("Question:") == 3
