"""PPO's critic options: its own schedule, extra critic epochs, and a critic-only update."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from services.trainer.algos.schedule import lr_multiplier
from services.trainer.config import load_config
from services.trainer.rl.critic import critic_schedule, returns_fit
from services.trainer.rl.ppo import ppo_epochs


def _common(cfg: Any) -> dict[str, Any]:
    return {
        "total_steps": cfg.total_steps,
        "warmup_steps": cfg.warmup_steps,
        "lr_end_ratio": 0.0,
        "lr": cfg.optim.lr,
    }


def test_critic_schedule_defaults_to_the_policys() -> None:
    cfg = load_config(preset="tiny-cpu", overrides=["algo=ppo", "iterations=10"])
    got = critic_schedule(cfg, _common(cfg))
    assert got["lr"] == cfg.optim.lr and got["total_steps"] == cfg.total_steps
    assert got["warmup_steps"] == cfg.warmup_steps and got["lr_end_ratio"] == 0.0


def test_critic_schedule_own_lr_epochs_warmup_and_constant_lr() -> None:
    cfg = load_config(
        preset="tiny-cpu",
        overrides=[
            "algo=ppo",
            "iterations=10",
            "ppo.critic_lr=1e-3",
            "ppo.critic_epochs=4",
            "ppo.critic_warmup_iterations=5",
            "ppo.critic_lr_decay=false",
        ],
    )
    got = critic_schedule(cfg, _common(cfg))
    mini_batches = cfg.episodes_per_iteration // cfg.ppo.mini_batch_size  # 2
    assert got["lr"] == 1e-3 and got["total_steps"] == (10 + 5) * 4 * mini_batches
    # constant after its warm-up: the multiplier stays 1 to the last step
    total, warm = got["total_steps"], got["warmup_steps"]
    mult = [
        lr_multiplier(s, total_steps=total, warmup_steps=warm, end_ratio=got["lr_end_ratio"])
        for s in range(total)
    ]
    assert mult[warm:] == [1.0] * (total - warm)


def _llama() -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=40,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=32,
        pad_token_id=0,
    )


def _engines(cfg: Any) -> tuple[Any, Any]:
    """Real DeepSpeed engines (one process) around a tiny policy and critic."""
    from transformers import LlamaForCausalLM, LlamaModel

    from services.trainer.runtime.distributed import wrap
    from services.trainer.runtime.model import Critic

    torch.manual_seed(0)
    common = dict(
        lr=1e-3,
        total_steps=100,
        micro_batch_size=cfg.micro_batch_size,
        grad_accum_steps=cfg.mini_batch_size // cfg.micro_batch_size,
    )
    return (
        wrap(LlamaForCausalLM(_llama()), **common),
        wrap(Critic(LlamaModel(_llama()), 16, init=0.5), **common),
    )


def _inputs(n: int = 8, length: int = 6) -> Any:
    from services.trainer.data.episodes import Batch
    from services.trainer.rl.ppo import UpdateInputs

    ids = torch.randint(1, 40, (n, length), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(n, length - 1)
    batch = Batch(
        ids,
        torch.ones_like(ids),
        mask,
        torch.zeros(n, length - 1, dtype=torch.long),
        torch.ones(n),
        torch.arange(n),
    )
    zeros = torch.zeros(n, length - 1)
    return UpdateInputs(
        batch, torch.randn(n, length - 1), zeros - 3.7, zeros - 3.7, zeros + 0.5, zeros + 1.0
    )


@pytest.mark.parametrize(("epochs", "critic_epochs"), [(2, None), (2, 4), (3, 1)])
def test_policy_and_critic_take_their_own_number_of_epochs(
    epochs: int, critic_epochs: int | None
) -> None:
    cfg = load_config(
        preset="tiny-cpu",
        overrides=[
            "algo=ppo",
            f"ppo.epochs={epochs}",
            "ppo.mini_batch_size=4",
            "ppo.micro_batch_size=4",
            f"ppo.critic_epochs={critic_epochs if critic_epochs else 'null'}",
        ],
    ).ppo
    policy, critic = _engines(cfg)
    ppo_epochs(policy, critic, _inputs(), cfg, 1.0, torch.Generator().manual_seed(0))
    assert policy.global_steps == epochs * 2  # 8 episodes = 2 mini-batches of 4
    assert critic.global_steps == (critic_epochs or epochs) * 2
    _, alone = _engines(cfg)  # value warm-up: the critic alone, no log-probs needed
    stats = ppo_epochs(None, alone, _inputs(), cfg, 1.0, torch.Generator().manual_seed(0))
    assert alone.global_steps == (critic_epochs or epochs) * 2 and "loss/value" in stats
    assert "loss/policy" not in stats


def test_returns_fit_is_the_explained_variance_over_response_tokens() -> None:
    returns = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    assert returns_fit(returns, returns, mask) == {"critic/ev_returns": 1.0}
    const = torch.full_like(returns, 0.5)  # the mean: explains nothing
    assert returns_fit(const, returns, mask)["critic/ev_returns"] == pytest.approx(0.0)
    assert returns_fit(const, torch.ones_like(returns), mask) == {}  # constant returns: none
