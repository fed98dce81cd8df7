"""RL learns: every RL method raises the train reward on a task learnable by construction.

The test every RL codebase needs: a sign error, advantages shifted by one token, a loss that
ignores the advantages or an optimizer that never steps all pass "the loss is finite" tests,
and all fail this one. Through the real loop: sampling and MC values on the torch engine
behind the work queue, grading by the reward service, PPO epochs on the DeepSpeed-wrapped
policy, weight pushes.

Task (tests/services/trainer/learnable.py): write a three-digit number three times (three
reasoning steps); a tiny Llama is SFT'd in the test on solutions whose second line is right
35 % of the time and reversed otherwise (the third line copies it), so at the paper's
sampling temperature (0.6) it starts at about a quarter right.
`test_vine_blames_only_the_wrong_step` checks VinePPO's step-level credit on it: negative
advantage on the step that went wrong, about 0 elsewhere.
``start`` is the mean reward of that SFT policy measured once on 1,000+ samples (standard
error ≈ 0.015) through the same services. Each algorithm must bring the mean train reward of
its last 3 iterations to start + 0.3 or more; a control run with the learning rate at ~0 must
stay within ±0.05 of start (the same update path with the step size removed: it shows the rise
comes from the learning, not from a drift in sampling or grading).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from shared.datasets import load_examples
from shared.prompts import format_prompt
from shared.schemas import GradeItem, SamplingParams
from tests.services.trainer.learnable import ERROR_STEP, write_data

pytestmark = [pytest.mark.slow, pytest.mark.server]

TEMPERATURE = 0.6  # the paper's sampling temperature
ITERATIONS = 8
GAIN = 0.3  # the bar: last-3 mean >= start + 0.3
CONTROL_TOLERANCE = 0.05


def rl_overrides(model: Path, out: Path, algo: str, *, lr: float = 3e-4) -> list[str]:
    return [
        f"algo={algo}",
        "dataset=gsm8k",
        f"iterations={ITERATIONS}",
        f"model.policy={model}",
        f"output_dir={out}",
        f"optim.lr={lr}",
        f"rollout.temperature={TEMPERATURE}",
        "rollout.prompts_per_iteration=16",
        "rollout.responses_per_prompt=8",
        "rollout.max_response_tokens=32",
        "ppo.mini_batch_size=64",
        "ppo.micro_batch_size=32",
        "vine.k=4",
        "eval.every=1000",
        "eval.num_problems=8",
        "eval.seeds=1",
        "eval.max_response_tokens=32",
    ]


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The SFT'd policy (about 100 s on 2 cores); RL data under $VINEPPO_DATA_DIR."""
    from services.trainer.sft.config import SFTConfig
    from services.trainer.sft.train import run_sft

    root = tmp_path_factory.mktemp("learnable")
    sft_dir, rl_dir = write_data(root, p_correct=0.35)
    cfg = SFTConfig(
        dataset="gsm8k",
        from_scratch=True,
        model_preset="tiny",
        output_dir=str(root / "sft"),
        lr=3e-3,
        batch_size=64,
        max_steps=400,
        val_problems=8,
        eval_every=400,
        eval_max_tokens=32,
        max_seq_len=64,
    )
    model = run_sft(cfg, data_dir=sft_dir, progress=False).best_dir
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VINEPPO_DATA_DIR", str(rl_dir))
        yield model


async def _sampled_reward(model: Path, out: Path, samples_per_prompt: int = 8) -> float:
    """Mean reward of ``model`` on every training prompt × n samples at TEMPERATURE."""
    from services.trainer.client.jobs import JobOptions, run_generate_jobs
    from services.trainer.client.local_services import run_services

    examples = load_examples("gsm8k", "train")
    prompts = [format_prompt(ex.question) for ex in examples]
    sampling = SamplingParams(temperature=TEMPERATURE, max_tokens=32, seed=12345)
    async with run_services(model, out / "policies", job_size=32) as services:
        outs = await run_generate_jobs(
            services.queue,
            prompts,
            version=0,
            n=samples_per_prompt,
            sampling=sampling,
            options=JobOptions(progress=False),
        )
        items = [
            GradeItem(response=c.text, gold=ex.answer, dataset="gsm8k")
            for ex, per in zip(examples, outs, strict=True)
            for c in per
        ]
        verdicts = await services.grader.grade(items)
    finished = [c.finish_reason == "stop" for per in outs for c in per]
    rewards = [v.reward if done else 0.0 for v, done in zip(verdicts, finished, strict=True)]
    assert not any(v.status == "error" for v in verdicts), "the grader failed"
    return sum(rewards) / len(rewards)


@pytest.fixture(scope="module")
def start(task: Path, tmp_path_factory: pytest.TempPathFactory) -> float:
    value = asyncio.run(_sampled_reward(task, tmp_path_factory.mktemp("start")))
    assert 0.15 <= value <= 0.40, f"the SFT policy should start at 15-40 % reward, got {value}"
    return value


def _train(overrides: list[str]) -> list[float]:
    """Run the RL loop; the train reward of each iteration."""
    from services.trainer.client.local_services import run_services
    from services.trainer.config import load_config
    from services.trainer.rl.loop import RLTrainer

    cfg = load_config(preset="tiny-cpu", overrides=overrides)
    out = Path(cfg.output_dir)

    async def run() -> None:
        async with run_services(cfg.model.policy, out / "policies", job_size=32) as services:
            await RLTrainer(cfg, services, progress=False).run()

    asyncio.run(run())
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["reward/mean"] for r in rows if r["iteration"] > 0]


def _last3(rewards: list[float]) -> float:
    return sum(rewards[-3:]) / 3


@pytest.mark.parametrize("algo", ["vine", "ppo", "grpo", "rloo"])
def test_rl_raises_train_reward(task: Path, start: float, tmp_path: Path, algo: str) -> None:
    t0 = time.monotonic()
    rewards = _train(rl_overrides(task, tmp_path / algo, algo))
    elapsed = time.monotonic() - t0
    print(
        f"{algo}: start {start:.3f} -> last-3 {_last3(rewards):.3f}  rewards "
        f"{[round(r, 3) for r in rewards]}  {elapsed:.0f}s"
    )
    assert _last3(rewards) >= start + GAIN, (algo, start, rewards)


def test_control_without_learning_rate_stays_put(task: Path, start: float, tmp_path: Path) -> None:
    rewards = _train(rl_overrides(task, tmp_path / "control", "vine", lr=1e-12))
    print(
        f"control: start {start:.3f} -> last-3 {_last3(rewards):.3f}  "
        f"{[round(r, 3) for r in rewards]}"
    )
    assert abs(_last3(rewards) - start) <= CONTROL_TOLERANCE, (start, rewards)


def test_vine_blames_only_the_wrong_step(task: Path, start: float, tmp_path: Path) -> None:
    """One iteration's VinePPO step advantages (MC values through the real services, K = 32,
    before whitening): on wrong responses step 1, where the number was reversed,
    carries the blame and steps 0 and 2 get about 0 (a trajectory-level baseline would blame
    all three alike); on right responses step 1 gets the credit."""
    from services.trainer.client.local_services import run_services
    from services.trainer.config import load_config
    from services.trainer.rl.loop import RLTrainer

    overrides = [*rl_overrides(task, tmp_path / "vine", "vine"), "vine.k=32"]
    cfg = load_config(preset="tiny-cpu", overrides=overrides)

    async def one_batch() -> tuple[list[int], torch.Tensor, torch.Tensor]:
        async with run_services(cfg.model.policy, tmp_path / "policies", job_size=32) as s:
            trainer = RLTrainer(cfg, s, progress=False)
            await trainer.push()
            examples = [trainer.train[i] for i in trainer.data.take(16)]
            episodes, batch, *_ = await trainer.sample(examples, seed=1)
            _, extra, _ = await trainer.advantages(episodes, batch, seed=2)
        return [len(e.spans) for e in episodes], extra["step_advantages"], batch.rewards

    steps, step_adv, rewards = asyncio.run(one_batch())  # step_adv: (B, 3)
    assert set(steps) == {3}, f"every response should have 3 steps, got {set(steps)}"
    wrong, right = rewards == 0, rewards == 1
    assert wrong.sum() >= 16 and right.sum() >= 8, (int(wrong.sum()), int(right.sum()))
    on_wrong = step_adv[wrong].mean(0)  # mean advantage of steps 0, 1, 2 on wrong responses
    on_right = step_adv[right].mean(0)
    print(f"wrong: {on_wrong.tolist()}  right: {on_right.tolist()}")
    # V(s_1) ≈ start: a reversed step 1 costs about start, a right one gains about 1 - start
    assert on_wrong[ERROR_STEP] <= -start / 2, (start, on_wrong)
    assert on_right[ERROR_STEP] >= (1 - start) / 2, (start, on_right)
    for other in (0, 2):
        assert abs(float(on_wrong[other])) <= 0.1, (other, on_wrong)
        assert abs(float(on_right[other])) <= 0.1, (other, on_right)
