"""The baselines' math against hand computations: GRPO/RLOO on [1, 0, 0, 1], DPO-Positive,
pair building, RestEM's checkpoint rule and kept rows, and the baseline config sections."""

from __future__ import annotations

import math

import pytest
import torch

from services.trainer.algos import AdvantageInputs, compute_advantages
from services.trainer.algos.losses import dpo_positive_loss
from services.trainer.baselines.dpo import PairRound, make_pairs, sequence_logprobs
from services.trainer.baselines.restem import keep_correct, select_checkpoint
from services.trainer.config import PRESETS, load_config
from services.trainer.sft.train import IGNORE
from shared.schemas import Completion


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_grpo_and_rloo_on_1001_with_default_eps() -> None:
    # group [1, 0, 0, 1]: mean 0.5; unbiased std = sqrt(((.5²)·4) / 3) = 0.57735
    # GRPO: ±0.5 / (0.57735 + 1e-6) = ±0.866024; RLOO: 1 − 1/3 = 2/3, 0 − 2/3 = −2/3
    inp = AdvantageInputs(
        rewards=torch.tensor([1.0, 0.0, 0.0, 1.0]),
        response_mask=torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]]),
        group_ids=torch.tensor([5, 5, 5, 5]),
    )
    a = 0.5 / (math.sqrt(1 / 3) + 1e-6)
    grpo, extra = compute_advantages("grpo", inp)
    expected = torch.tensor([[a, a, a], [-a, -a, 0], [-a, 0, 0], [a, a, a]])
    torch.testing.assert_close(grpo, expected)
    torch.testing.assert_close(extra["sequence_advantages"], torch.tensor([a, -a, -a, a]))
    rloo, _ = compute_advantages("rloo", inp)
    b = 2 / 3
    torch.testing.assert_close(rloo, torch.tensor([[b, b, b], [-b, -b, 0], [-b, 0, 0], [b, b, b]]))


def test_grpo_all_equal_group_gets_zero() -> None:
    # all correct: R − mean = 0 in every row, std 0 -> 0 / eps = 0 (no NaN)
    inp = AdvantageInputs(torch.ones(4), torch.ones(4, 2), group_ids=torch.zeros(4).long())
    for name in ("grpo", "rloo"):
        adv, _ = compute_advantages(name, inp)
        assert torch.equal(adv, torch.zeros(4, 2))


def test_dpo_positive_batch_by_hand() -> None:
    # β = 0.3, λ = 50, λ inside β (Pal et al. eq. 3, the authors' trainer, TRL use_dpop).
    # Pair 0: Δ_w = −4 − (−5) = 1, Δ_l = −7 − (−6) = −1, chosen above ref (no penalty)
    #   -> logits 0.3·2 = 0.6. Pair 1: Δ_w = −3.2 − (−3) = −0.2, Δ_l = −2 − (−2.5) = 0.5,
    #   penalty 0.2 -> logits 0.3·(−0.7 − 50·0.2) = −3.21 (λ outside β would give −10.21).
    loss, stats = dpo_positive_loss(
        torch.tensor([-4.0, -3.2]),
        torch.tensor([-7.0, -2.0]),
        torch.tensor([-5.0, -3.0]),
        torch.tensor([-6.0, -2.5]),
        beta=0.3,
        lam=50.0,
    )
    expected = (-math.log(_sigmoid(0.6)) - math.log(_sigmoid(-3.21))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert stats["dpo/penalty"].item() == pytest.approx(0.1)
    assert stats["dpo/accuracy"].item() == pytest.approx(0.5)
    assert stats["dpo/margin"].item() == pytest.approx((2.0 - 0.7) / 2)


def test_dpo_positive_penalty_gradient_scales_with_beta_times_lambda() -> None:
    # chosen 0.5 below its reference, rejected unchanged: logits = β·(−0.5 − λ·0.5);
    # d loss / d log π(y_w) = −σ(−logits)·β·(1 + λ) (the penalty's slope is −1 in log π(y_w))
    beta, lam = 0.1, 50.0
    chosen = torch.tensor([-2.5], requires_grad=True)
    loss, _ = dpo_positive_loss(
        chosen, torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-3.0]), beta, lam
    )
    loss.backward()
    logits = beta * (-0.5 - lam * 0.5)
    assert loss.item() == pytest.approx(-math.log(_sigmoid(logits)), rel=1e-6)
    assert chosen.grad is not None
    assert chosen.grad.item() == pytest.approx(-_sigmoid(-logits) * beta * (1 + lam), rel=1e-5)


def test_dpo_positive_gradient_pushes_chosen_up() -> None:
    chosen = torch.tensor([-3.0], requires_grad=True)
    rejected = torch.tensor([-3.0], requires_grad=True)
    loss, _ = dpo_positive_loss(chosen, rejected, torch.tensor([-3.0]), torch.tensor([-3.0]))
    loss.backward()
    assert chosen.grad is not None and rejected.grad is not None
    assert chosen.grad.item() < 0 < rejected.grad.item()  # descent raises y_w, lowers y_l


def test_make_pairs_by_hand() -> None:
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0])
    groups = torch.tensor([0, 0, 0, 0, 1, 2, 2])
    gen = torch.Generator().manual_seed(0)
    w, lo = make_pairs(rewards, groups, max_pairs=10, generator=gen)
    # group 0: wins {0, 2} × losses {1, 3}; group 1 has no win, group 2 no loss
    assert list(zip(w.tolist(), lo.tolist(), strict=True)) == [(0, 1), (0, 3), (2, 1), (2, 3)]
    w, lo = make_pairs(rewards, groups, max_pairs=3, generator=gen)
    pairs = set(zip(w.tolist(), lo.tolist(), strict=True))
    assert len(pairs) == 3 and pairs <= {(0, 1), (0, 3), (2, 1), (2, 3)}


def test_sequence_logprobs_sums_response_tokens() -> None:
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.25, -9.0]])
    mask = torch.tensor([[0.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    torch.testing.assert_close(sequence_logprobs(logp, mask), torch.tensor([-5.0, -0.75]))


def test_pair_round_batch_in_the_action_frame() -> None:
    # two sequences: prompt [1, 2] + response [5, 6, 7]; prompt [3] + response [8]
    seqs = [
        torch.tensor([1, 2, 5, 6, 7], dtype=torch.int32),
        torch.tensor([3, 8], dtype=torch.int32),
    ]
    data = PairRound(
        seqs=seqs,
        prompt_lens=[2, 1],
        ref_logprobs=[torch.tensor([-0.5, -1.0, -2.0]), torch.tensor([-3.0])],
        chosen=[0],
        rejected=[1],
    )
    b = data.batch([1, 0], pad_id=0)
    assert b["input_ids"].tolist() == [[3, 8, 0, 0, 0], [1, 2, 5, 6, 7]]
    assert b["attention_mask"].tolist() == [[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]
    # action t predicts token t+1: the response of row 1 is actions 1..3, of row 0 action 0
    assert b["response_mask"].tolist() == [[1, 0, 0, 0], [0, 1, 1, 1]]
    assert b["ref_logprobs"].tolist() == [[-3.0, 0, 0, 0], [0, -0.5, -1.0, -2.0]]
    torch.testing.assert_close(data.ref_seq(), torch.tensor([-3.5, -3.0]))
    torch.testing.assert_close(
        sequence_logprobs(b["ref_logprobs"], b["response_mask"]), torch.tensor([-3.0, -3.5])
    )


@pytest.mark.parametrize(
    ("accs", "pick"),
    [
        ([0.4], 0),  # one checkpoint
        ([0.2, 0.3, 0.3, 0.1, 0.5], 2),  # first drop after index 2; the later rise is ignored
        ([0.5, 0.4], 0),  # drops right away: keep the first epoch
        ([0.1, 0.2, 0.3], 2),  # never drops: the last one
    ],
)
def test_select_checkpoint(accs: list[float], pick: int) -> None:
    assert select_checkpoint(accs) == pick


def test_select_checkpoint_needs_one() -> None:
    with pytest.raises(ValueError, match="no checkpoints"):
        select_checkpoint([])


def _c(ids: list[int], reason: str = "stop") -> Completion:
    return Completion(text="x", token_ids=ids, logprobs=[0.0] * len(ids), finish_reason=reason)


def test_keep_correct_rows() -> None:
    eos = 9
    outs = [[_c([1, 2, eos]), _c([1, 2, eos]), _c([3]), _c([4, eos])], [_c([5, eos])]]
    rewards = [1.0, 1.0, 1.0, 0.0, 0.0]  # duplicate dropped, [3] gets an EOS, [4] wrong
    rows = keep_correct([[7, 7], [8]], outs, rewards, eos)
    assert rows == [
        ([7, 7, 1, 2, eos], [IGNORE, IGNORE, 1, 2, eos]),
        ([7, 7, 3, eos], [IGNORE, IGNORE, 3, eos]),
    ]
    assert len(keep_correct([[7, 7], [8]], outs, rewards, eos, max_per_prompt=1)) == 1


def test_baseline_config_sections() -> None:
    cfg = load_config(overrides=["algo=dpo_positive"])
    assert (cfg.dpo.samples_per_prompt, cfg.dpo.pairs_per_prompt, cfg.dpo.lam) == (64, 64, 50.0)
    assert cfg.dpo.resolved_beta("gsm8k") == 0.3 and cfg.dpo.resolved_beta("math") == 0.1
    assert load_config(overrides=["dpo.beta=0.5"]).dpo.resolved_beta("math") == 0.5
    # one offline round over the whole training split (the authors' DPO-Positive configs)
    assert cfg.dpo.train_prompts is None and cfg.dpo.epochs == 3
    restem = load_config(overrides=["algo=restem"]).restem
    assert restem.samples_per_prompt == 8
    assert restem.epochs == 8  # the authors' RestEM configs: num_epochs_per_iteration 8
    with pytest.raises(ValueError, match=r"restem.batch_size \(10\)"):
        load_config(overrides=["restem.batch_size=10", "restem.micro_batch_size=4"])
    for name in ("tiny-cpu-restem", "tiny-cpu-dpo"):
        tiny = load_config(preset=name)
        assert tiny.dataset == "arithmetic" and PRESETS[name]["rollout"]
