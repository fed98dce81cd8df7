"""Value-analysis metrics against hand-computed tiny inputs, and the analysis end to end on a
deterministic (greedy) policy whose true values are known by construction."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest
import torch

from services.trainer.analysis import (
    accuracy_curve,
    accuracy_within,
    explained_variance,
    group_baseline,
    mae_by_step,
    mean_abs_error,
    method_metrics,
    summarize,
    top_action_accuracy,
)
from services.trainer.value_probe import first_step

PRED = torch.tensor([0.5, 0.2, 1.0, 0.0])
TRUTH = torch.tensor([0.5, 0.25, 0.8, 0.1])
STEP = torch.tensor([0, 1, 0, 1])


def test_mae_accuracy_and_explained_variance_by_hand() -> None:
    # |errors| = 0, 0.05, 0.2, 0.1
    assert mean_abs_error(PRED, TRUTH) == pytest.approx(0.35 / 4)
    assert accuracy_within(PRED, TRUTH) == 0.5  # 0 and 0.05 are within 0.05
    # Var[truth - pred] = 0.051875 / 4, Var[truth] = 0.281875 / 4 (population)
    assert explained_variance(PRED, TRUTH) == pytest.approx(1 - 0.051875 / 0.281875)
    assert explained_variance(TRUTH, TRUTH) == 1.0
    assert math.isnan(explained_variance(PRED, torch.full((4,), 0.3)))


def test_mae_by_step_and_accuracy_curve_by_hand() -> None:
    assert mae_by_step(PRED, TRUTH, STEP) == pytest.approx({0: 0.1, 1: 0.075})
    assert accuracy_curve(PRED, TRUTH, [0.0, 0.05, 0.1, 0.2]) == [0.25, 0.5, 0.75, 1.0]


def test_top_action_breaks_ties_at_random() -> None:
    pred = torch.tensor([[0.1, 0.9, 0.3], [0.5, 0.5, 0.2], [0.4, 0.4, 0.4]])
    truth = torch.tensor([[0.2, 0.8, 0.8], [0.1, 0.6, 0.3], [0.0, 1.0, 0.0]])
    # row 0: picks 1, a best one -> 1; row 1: ties {0, 1}, best {1} -> 1/2;
    # row 2: a constant baseline (GRPO) picks at random among 3 -> 1/3
    assert top_action_accuracy(pred, truth) == pytest.approx((1 + 0.5 + 1 / 3) / 3)
    with pytest.raises(ValueError, match="shapes"):
        top_action_accuracy(pred, truth[:, :2])


def test_group_baselines_grpo_and_rloo_by_hand() -> None:
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    grpo = group_baseline(rewards, groups)
    rloo = group_baseline(rewards, groups, leave_one_out=True)
    assert grpo.tolist() == pytest.approx([2 / 3] * 3 + [1 / 3] * 3)
    assert rloo.tolist() == pytest.approx([0.5, 1.0, 0.5, 0.0, 0.5, 0.5])
    assert group_baseline(torch.tensor([1.0]), torch.tensor([7]), True).tolist() == [1.0]


def test_method_metrics_and_summarize_are_json_ready() -> None:
    m = method_metrics(PRED, torch.full((4,), 0.3), STEP)
    assert m["explained_variance"] is None  # NaN -> None (valid JSON)
    records = {
        "truth": TRUTH.tolist(),
        "step": STEP.tolist(),
        "preds": {"a": PRED.tolist(), "b": TRUTH.tolist()},
        "top": {"truth": [[0.0, 1.0]], "preds": {"a": [[1.0, 0.0]], "b": [[0.0, 1.0]]}},
    }
    out = summarize(records)
    assert out["a"]["mae"] == pytest.approx(0.0875) and out["b"]["mae"] == 0.0
    assert out["a"]["top_action"] == 0.0 and out["b"]["top_action"] == 1.0
    assert out["a"]["mae_by_step"] == pytest.approx({"0": 0.1, "1": 0.075})


def test_first_step_of_a_continuation() -> None:
    assert first_step("3 + 4 = 7\n7 * 2 = 14\n#### 14", True, "gsm8k", "</s>") == "3 + 4 = 7\n"
    assert first_step("7 * 2 = 14\n#### 14", True, "gsm8k", "</s>") == "7 * 2 = 14\n#### 14</s>"
    assert first_step("7 * 2 = 1", False, "gsm8k", "</s>") == "7 * 2 = 1"


@pytest.mark.slow
@pytest.mark.server
def test_greedy_policy_gives_exact_mc_values(tiny_sft: Path, tmp_path: Path) -> None:
    """Temperature 0 makes the policy answer the same way every time, so the true value of
    every state is the reward of its one greedy completion: the MC estimate equals the ground
    truth exactly (MAE 0) and every value is 0 or 1."""
    from services.trainer.eval_cmds import analyze_checkpoint
    from services.trainer.value_probe import ProbeConfig
    from shared.datasets import load_examples

    examples = load_examples("arithmetic", "test", n=2, seed=0)
    cfg = ProbeConfig(
        responses=2,
        truth_k=3,
        vine_k=2,
        temperature=0.0,
        max_tokens=40,
        top_action_states=1,
        candidates=2,
        progress=False,
    )
    doc = asyncio.run(analyze_checkpoint(tiny_sft, examples, cfg, tmp_path / "va"))
    vine = doc["metrics"]["VinePPO K=2"]
    assert vine["mae"] == 0.0 and vine["accuracy"] == 1.0
    assert set(doc["records"]["truth"]) <= {0.0, 1.0}
    # the two greedy trajectories of a prompt are identical: the group's baseline is exact at s_0
    rec = doc["records"]
    s0 = [i for i, s in enumerate(rec["step"]) if s == 0]
    assert all(rec["preds"]["GRPO"][i] == rec["truth"][i] for i in s0)
    assert sorted(p.name for p in (tmp_path / "va").iterdir()) == [
        "analysis.json",
        "values-accuracy.png",
        "values-mae-by-step.png",
        "values-scatter.png",
    ]


@pytest.fixture(scope="module")
def tiny_sft(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.services.trainer.tiny_sft import tiny_sft_model

    return tiny_sft_model(tmp_path_factory)
