"""Training precision (`model.dtype`): which weights/autocast dtypes each setting gives on each
device, and why bfloat16 on CPU keeps float32 master weights (a small update survives)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from services.trainer.runtime import model as model_mod
from services.trainer.runtime.model import (
    FP32,
    Critic,
    Precision,
    build_tiny_model,
    load_policy,
    precision,
)
from shared.prompts import format_prompt
from shared.tasks.arithmetic import ArithmeticConfig, generate

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    examples = generate(ArithmeticConfig(), "train", 200, seed=0)
    texts = [format_prompt(e.question) + e.solution for e in examples]
    return build_tiny_model(tmp_path_factory.mktemp("m"), texts, preset="micro", seed=0)


def test_auto_and_float32_and_cuda_need_no_cpu_support() -> None:
    assert precision("auto", CPU) == FP32 and precision("float32", CPU) == FP32
    assert precision("float32", CUDA) == FP32  # honoured on CUDA too (no bf16 mode)
    assert precision("auto", CUDA) == precision("bfloat16", CUDA) == Precision(torch.bfloat16)
    assert Precision(torch.bfloat16).compute == "bfloat16" and FP32.compute == "float32"


@pytest.mark.parametrize("native", [True, False])
def test_bfloat16_on_cpu_follows_the_hardware_simulated_capability(
    native: bool, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The hardware query is replaced (this test runs on CPUs with and without AVX-512 BF16):
    native bfloat16 gives float32 master weights with bfloat16 autocast, and its absence
    float32 with a warning that says why."""
    monkeypatch.setattr(model_mod, "cpu_has_native_bf16", lambda: native)
    with caplog.at_level(logging.WARNING, logger=model_mod.__name__):
        got = precision("bfloat16", CPU)
    if native:
        assert got == Precision(torch.float32, autocast=torch.bfloat16)
        assert got.compute == "bfloat16" and not caplog.records
    else:
        assert got == FP32
        assert "no native bfloat16" in caplog.text


def test_the_hardware_query_answers() -> None:
    assert isinstance(model_mod.cpu_has_native_bf16(), bool)


def test_autocast_computes_in_bfloat16_with_float32_weights(tiny_dir: Path) -> None:
    mixed = Precision(torch.float32, autocast=torch.bfloat16)
    ids = torch.tensor([[1, 5, 9, 12, 7, 3]])
    plain = load_policy(tiny_dir)(input_ids=ids).logits
    model = load_policy(tiny_dir, "cpu", mixed)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    out = model(input_ids=ids).logits
    assert out.dtype == torch.bfloat16  # the matmuls ran in bfloat16
    assert torch.allclose(out.float(), plain, atol=0.1)  # the same function, rounded
    assert not torch.equal(out.float(), plain)
    critic = Critic.from_pretrained(tiny_dir, mixed)
    values = critic(ids, torch.ones_like(ids))
    assert values.dtype == torch.float32 and values.shape == (1, 6)
    assert critic.value_head.weight.dtype == torch.float32


def changed_share(model: torch.nn.Module, lr: float, mixed: bool) -> float:
    """Share of weights one AdamW step at ``lr`` changes."""
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    ids = torch.tensor([[1, 5, 9, 12, 7, 3, 8, 2]])
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mixed):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    opt.step()
    pairs = zip(model.parameters(), before, strict=True)
    moved = sum(int((p.detach() != b).sum()) for p, b in pairs)
    return moved / sum(b.numel() for b in before)


def test_float32_master_weights_keep_a_small_update_bfloat16_weights_lose_it(
    tiny_dir: Path,
) -> None:
    """AdamW moves each weight by about lr: at lr 1e-6 that is far below bfloat16's spacing
    near a typical weight (2^-7 relative, ≈ 1e-4 at 0.02), so bfloat16 weights round it away,
    while the float32 master copy of mixed precision keeps it (the paper's lr is 1e-6)."""
    mixed = changed_share(load_policy(tiny_dir), lr=1e-6, mixed=True)
    pure = changed_share(load_policy(tiny_dir, "cpu", Precision(torch.bfloat16)), 1e-6, False)
    assert mixed > 0.9
    assert pure < 0.05
