"""Tiny model building: tokenizer (digit splitting, round trip), config, policy and critic."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from services.trainer.runtime.model import (
    VALUE_HEAD_FILE,
    Critic,
    build_tiny_model,
    init_value_head,
    load_policy,
    load_tokenizer,
)
from shared.prompts import format_prompt
from shared.tasks.arithmetic import ArithmeticConfig, generate


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    examples = generate(ArithmeticConfig(), "train", 300, seed=0)
    texts = [format_prompt(e.question) + e.solution for e in examples]
    return build_tiny_model(tmp_path_factory.mktemp("m"), texts, preset="micro", seed=0)


def test_saved_as_safetensors_with_special_tokens(tiny_dir: Path) -> None:
    assert (tiny_dir / "model.safetensors").is_file()
    tok = load_tokenizer(tiny_dir)
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<s>", "</s>", "<pad>")
    assert len({tok.bos_token_id, tok.eos_token_id, tok.pad_token_id}) == 3
    assert tok("7 + 5")["input_ids"][0] == tok.bos_token_id


def test_digits_split_and_text_round_trips(tiny_dir: Path) -> None:
    tok = load_tokenizer(tiny_dir)
    text = "Question: Ann has 1234 pens.\nAnswer:\n12 * 3 = 36\n#### 36"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    pieces = [tok.decode([i]) for i in ids]
    digits = [p for p in pieces if any(c.isdigit() for c in p)]
    assert all(len(p.strip()) == 1 for p in digits), pieces  # one digit per token
    assert "".join(p.strip() for p in digits) == "1234" + "12" + "3" + "36" + "36"
    assert tok.decode(ids) == text  # byte-exact, newlines and spaces included


def test_policy_config_and_dropout(tiny_dir: Path) -> None:
    model = load_policy(tiny_dir, "cpu")
    tok = load_tokenizer(tiny_dir)
    assert model.config.hidden_size == 64 and model.config.num_hidden_layers == 2
    assert model.config.vocab_size == len(tok)
    assert model.config.attention_dropout == 0.0
    assert all(m.p == 0.0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
    ids = torch.tensor([tok("Question: x")["input_ids"]])
    assert model(ids).logits.shape == (1, ids.shape[1], len(tok))


def test_same_seed_same_weights(tiny_dir: Path, tmp_path: Path) -> None:
    examples = generate(ArithmeticConfig(), "train", 300, seed=0)
    texts = [format_prompt(e.question) + e.solution for e in examples]
    again = build_tiny_model(tmp_path / "again", texts, preset="micro", seed=0)
    a, b = load_policy(tiny_dir), load_policy(again)
    for (na, pa), (nb, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert na == nb and torch.equal(pa, pb)


def test_critic_values_and_save_load(tiny_dir: Path, tmp_path: Path) -> None:
    critic = Critic.from_pretrained(tiny_dir)
    ids = torch.randint(3, 50, (2, 7))
    mask = torch.ones_like(ids)
    values = critic(ids, mask)
    assert values.shape == (2, 7) and values.dtype == torch.float32
    critic.save_pretrained(tmp_path / "critic")
    assert (tmp_path / "critic" / VALUE_HEAD_FILE).is_file()
    again = Critic.from_pretrained(tmp_path / "critic")
    torch.testing.assert_close(again(ids, mask), values)
    values.sum().backward()  # the head and the body both get gradients
    assert critic.value_head.weight.grad is not None
    assert any(p.grad is not None for p in critic.backbone.parameters())


def test_value_head_initialised_as_the_authors(tiny_dir: Path) -> None:
    # their critic: weight ~ N(0, std = 1/√(H+1)), bias 0 (not 1/(H+1), √H times smaller)
    torch.manual_seed(0)
    head = init_value_head(torch.nn.Linear(4095, 1))
    assert float(head.weight.std()) == pytest.approx(1 / 64, rel=0.05)
    assert float(head.bias.abs().max()) == 0.0
    critic = Critic.from_pretrained(tiny_dir)  # fresh head on the 64-wide micro model
    assert critic.value_head.in_features == 64 and float(critic.value_head.bias.abs().max()) == 0
    assert float(critic.value_head.weight.std()) == pytest.approx(1 / 65**0.5, rel=0.3)


def test_unknown_preset(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="known: micro, tiny, small"):
        build_tiny_model(tmp_path, ["a"], preset="huge")


def test_constant_value_head_starts_every_state_at_the_value(tiny_dir: Path) -> None:
    critic = Critic.from_pretrained(tiny_dir, init=0.5)
    ids = torch.tensor([[1, 5, 7, 9], [1, 8, 8, 2]])
    values = critic(ids, torch.ones_like(ids))
    torch.testing.assert_close(values, torch.full((2, 4), 0.5))
    values.sum().backward()  # the weights learn at once; the body once the weights move
    assert float(critic.value_head.weight.grad.abs().sum()) > 0
