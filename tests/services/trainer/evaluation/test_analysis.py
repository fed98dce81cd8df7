"""Value-analysis metrics against hand-computed tiny inputs, and the analysis end to end on a
deterministic (greedy) policy whose true values are known by construction."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest
import torch

from services.trainer.evaluation.analysis import (
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
from services.trainer.evaluation.value_probe import first_step

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


def test_top_action_leaves_out_states_without_a_best_action() -> None:
    # row 1: every candidate truly keeps V = 1, so any pick would be a "hit": not counted
    pred = torch.tensor([[0.1, 0.9], [0.3, 0.2], [0.5, 0.4]])
    truth = torch.tensor([[0.0, 1.0], [1.0, 1.0], [0.0, 0.5]])
    assert top_action_accuracy(pred, truth) == pytest.approx((1 + 0) / 2)
    assert math.isnan(top_action_accuracy(pred[1:2], truth[1:2]))


def test_group_baseline_leaves_the_own_outcome_out() -> None:
    # a value predictor must not contain the reward it predicts: GRPO's and RLOO's baseline of
    # response b is the mean of the *other* rewards of its group (GRPO's plain group mean
    # would give [2/3] * 3 + [1/3] * 3, i.e. 1/n of every response's own outcome)
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    assert group_baseline(rewards, groups).tolist() == pytest.approx([0.5, 1.0, 0.5, 0.0, 0.5, 0.5])
    # one right answer among four: its predictor says 0, the three wrong ones 1/3
    lone = group_baseline(torch.tensor([1.0, 0.0, 0.0, 0.0]), torch.zeros(4, dtype=torch.long))
    assert lone.tolist() == pytest.approx([0.0, 1 / 3, 1 / 3, 1 / 3])
    with pytest.raises(ValueError, match="needs >= 2"):  # alone in its group: nothing to use
        group_baseline(torch.tensor([1.0, 0.0, 1.0]), torch.tensor([7, 8, 8]))


def test_critic_values_are_not_clamped(tmp_path: Path) -> None:
    """The critic's V(s) is scored as it is: a head that says 1.5 (or −0.5) is 0.5 off a
    true value of 1 (or 0); clamping to [0, 1] would report 0."""
    from services.trainer.evaluation.value_probe import critic_state_values
    from services.trainer.runtime.model import Critic, build_tiny_model, load_tokenizer

    texts = ["Question: 1 + 2?\nAnswer:\n1 + 2 = 3\n#### 3"] * 4
    model_dir = build_tiny_model(tmp_path / "m", texts, preset="micro")
    critic, tok = Critic.from_pretrained(model_dir).eval(), load_tokenizer(model_dir)
    states = [("Question: 1 + 2?\nAnswer:\n", ""), ("Question: 1 + 2?\nAnswer:\n", "1 + 2 = 3\n")]
    for bias in (1.5, -0.5):
        torch.nn.init.zeros_(critic.value_head.weight)
        torch.nn.init.constant_(critic.value_head.bias, bias)
        assert critic_state_values(critic, tok, states) == pytest.approx([bias, bias])


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
    from services.trainer.evaluation.runs import analyze_checkpoint
    from services.trainer.evaluation.value_probe import ProbeConfig
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
    # the two greedy trajectories of a prompt are identical: the other one's reward (the
    # leave-one-out baseline) is exact at s_0
    rec = doc["records"]
    s0 = [i for i, s in enumerate(rec["step"]) if s == 0]
    assert all(rec["preds"]["GRPO/RLOO"][i] == rec["truth"][i] for i in s0)
    reuse = "VinePPO K=2, reusing returns"
    assert set(rec["preds"]) == {"VinePPO K=2", reuse, "GRPO/RLOO"}
    assert set(rec["top"]["preds"]) == {"VinePPO K=2", "GRPO/RLOO"}  # reuse: no child passes
    # both responses pass every state, so reuse samples 1 of K = 2 and is exact all the same
    assert doc["metrics"][reuse]["mae"] == 0.0
    cost = rec["mc_cost"]
    assert cost[reuse]["samples"] == cost["VinePPO K=2"]["samples"] / 2 > 0
    assert cost[reuse]["tokens"] == pytest.approx(cost["VinePPO K=2"]["tokens"] / 2)
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
