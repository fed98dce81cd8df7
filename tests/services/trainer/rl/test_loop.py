"""Integration: the RL loop through real reward and rollout services on loopback.

A tiny Llama is built and briefly SFT'd in the test (seconds), then ``vine`` and ``ppo`` each
run 3 iterations: losses finite, the policy version increments every iteration, and a
killed-and-resumed run continues exactly where an uninterrupted one goes.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.trainer.client.local_services import run_services
from services.trainer.config import RunConfig, load_config
from services.trainer.rl.loop import RLTrainer
from tests.services.trainer.tiny_sft import tiny_sft_model

pytestmark = [pytest.mark.slow, pytest.mark.server]


@pytest.fixture(scope="module")
def sft_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_sft_model(tmp_path_factory)


def tiny_run(model: Path, out: Path, algo: str, iterations: int, *extra: str) -> RunConfig:
    return load_config(
        preset="tiny-cpu",
        overrides=[
            f"algo={algo}",
            f"iterations={iterations}",
            f"model.policy={model}",
            f"output_dir={out}",
            "rollout.prompts_per_iteration=4",
            "rollout.responses_per_prompt=2",
            "rollout.max_response_tokens=40",
            "ppo.mini_batch_size=8",
            "ppo.micro_batch_size=4",
            "vine.k=2",
            "eval.every=3",
            "eval.num_problems=4",
            "eval.max_response_tokens=40",
            "optim.lr=1e-4",
            *extra,
        ],
    )


async def _train(cfg: RunConfig, resume: bool = False) -> list[dict[str, object]]:
    out = Path(cfg.output_dir)
    async with run_services(cfg.model.policy, out / "policies", job_size=4) as services:
        await RLTrainer(cfg, services, progress=False).run(resume=resume)
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("algo", ["vine", "vine+reuse", "ppo"])
def test_three_iterations_through_real_services(sft_model: Path, tmp_path: Path, algo: str) -> None:
    algo, _, reuse = algo.partition("+")
    extra = ["vine.reuse_returns=true"] if reuse else []
    rows = asyncio.run(_train(tiny_run(sft_model, tmp_path / algo, algo, 3, *extra)))
    steps = [r for r in rows if r["iteration"] > 0]
    assert [r["version"] for r in steps] == [1, 2, 3]
    for r in steps:
        assert math.isfinite(r["loss/policy"]) and math.isfinite(r["kl/ref"])
        assert 0.0 <= r["reward/mean"] <= 1.0
    if algo == "vine":
        assert all(r["value/num_states"] >= 4 for r in steps)  # at least s_0 of each prompt
        # k = 2 per state; reusing returns, s_0 (both responses pass it) needs only one
        fewer = [r["value/mc_samples"] < 2 * r["value/num_states"] for r in steps]
        assert all(fewer) if reuse else not any(fewer)
    else:
        assert all(math.isfinite(r["loss/value"]) for r in steps)
    assert "acc/val" in rows[0] and "acc/val" in steps[-1]
    assert (tmp_path / algo / "policies" / "policy-v3").is_dir()
    assert list((tmp_path / algo / "tb").glob("events.out.tfevents.*"))  # TensorBoard events


def test_ppo_value_warmup_and_critic_probe(sft_model: Path, tmp_path: Path) -> None:
    """The careful-PPO options through the real loop: value warm-up before iteration 1 (its
    time on the iteration-0 row) and the critic's MAE / explained variance against MC truth
    at each validation."""
    cfg = tiny_run(
        sft_model,
        tmp_path / "ppo",
        "ppo",
        3,
        "ppo.critic_warmup_iterations=2",
        "ppo.critic_init=0.5",
        "ppo.critic_lr=1e-3",
        "ppo.critic_epochs=3",
        "eval.value_probe_prompts=2",
        "eval.value_probe_k=4",
    )
    rows = asyncio.run(_train(cfg))
    first, last = rows[0], rows[-1]
    assert first["iteration"] == 0 and first["critic/warmup_episodes"] == 2 * 8
    assert first["time/critic_warmup"] > 0
    assert math.isfinite(first.get("critic/warmup_ev_last", 0.0))  # absent if returns constant
    for row in (first, last):  # validations: the probe's numbers
        assert row["value/probe_states"] >= 2 and 0 <= row["value/critic_mae"] <= 1.5
        assert 0 <= row["value/group_mae"] <= 1
    assert all(math.isfinite(float(r["loss/value"])) for r in rows[1:])


def _train_cmd(model: Path, out: Path, iterations: int, *extra: str) -> list[str]:
    sets = [
        f"model.policy={model}",
        f"iterations={iterations}",
        "eval.every=100",
        "rollout.prompts_per_iteration=4",
        "rollout.responses_per_prompt=2",
        "rollout.max_response_tokens=40",
        "ppo.mini_batch_size=8",
        "ppo.micro_batch_size=4",
        "vine.k=2",
        "eval.num_problems=4",
        "eval.max_response_tokens=40",
        "optim.lr=1e-4",
    ]
    args = [
        sys.executable,
        "-m",
        "services.cli",
        "train",
        "--algo",
        "vine",
        "--preset",
        "tiny-cpu",
        "--output-dir",
        str(out),
        "--threads",
        "1",
        *extra,
    ]
    for s in sets:
        args += ["--set", s]
    return args


def _run(args: list[str], env: dict[str, str]) -> None:
    proc = subprocess.run(args, env=env, timeout=600, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]


def _rows(out: Path) -> dict[int, dict[str, object]]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return {int(r["iteration"]): r for r in rows}


def test_kill_9_then_resume_matches_an_uninterrupted_run(sft_model: Path, tmp_path: Path) -> None:
    dist_vars = {"MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"}
    env = {k: v for k, v in os.environ.items() if k not in dist_vars}  # this process's group
    env["OMP_NUM_THREADS"] = "1"
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    _run(_train_cmd(sft_model, straight, 2), env)
    # 1) start the same run, kill -9 it as soon as iteration 1 is checkpointed
    err = tmp_path / "killed.stderr"
    with err.open("wb") as err_file:
        proc = subprocess.Popen(
            _train_cmd(sft_model, killed, 2), env=env, stdout=subprocess.DEVNULL, stderr=err_file
        )
    latest = killed / "checkpoints" / "latest"
    deadline = time.monotonic() + 600
    while not (latest.is_file() and latest.read_text().strip() == "1"):
        if proc.poll() is not None:
            raise AssertionError(
                f"the run ended before it could be killed (exit "
                f"{proc.returncode}):\n{err.read_text()[-4000:]}"
            )
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # 2) resume: it continues from iteration 1 and produces the same iteration 2
    _run(_train_cmd(sft_model, killed, 2, "--resume"), env)
    a, b = _rows(straight), _rows(killed)
    assert sorted(b) == sorted(a) == [0, 1, 2]
    keys = (
        "reward/mean",
        "loss/policy",
        "kl/ref",
        "entropy",
        "response/tokens_mean",
        "value/num_states",
        "value/mc_tokens",
        "adv/std",
    )
    for key in keys:
        assert b[2][key] == pytest.approx(a[2][key], rel=1e-5, abs=1e-7), key
