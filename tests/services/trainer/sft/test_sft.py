"""SFT end to end: `vineppo sft --from-scratch` on the built-in task in a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from services.trainer.sft.config import SFTConfig
from services.trainer.sft.train import collate, encode_example, score
from shared.example import Example

ROOT = Path(__file__).resolve().parents[4]


def test_score_uses_final_answer() -> None:
    ex = Example("x", "q", "1 + 1 = 2\n#### 2", "2", "gsm8k")
    assert score("1 + 1 = 2\n#### 2", ex) == 1.0
    assert score("1 + 1 = 3\n#### 3", ex) == 0.0
    assert score("no answer", ex) == 0.0


class _Tok:
    eos_token_id = 2

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        ids = [ord(c) for c in text]
        return {"input_ids": ([1] if add_special_tokens else []) + ids}


def test_labels_mask_the_prompt() -> None:
    ex = Example("x", "q", "ab", "", "gsm8k")
    ids, labels = encode_example(_Tok(), ex, max_len=100)
    prompt_len = len(ids) - 3  # response = 'a', 'b', EOS
    assert labels[:prompt_len] == [-100] * prompt_len
    assert labels[prompt_len:] == [ord("a"), ord("b"), 2] == ids[prompt_len:]
    batch = collate([(ids, labels), (ids[:3], labels[:3])], pad_id=0)
    assert batch["input_ids"].shape == (2, len(ids))
    assert batch["attention_mask"][1].tolist() == [1, 1, 1] + [0] * (len(ids) - 3)
    assert bool((batch["labels"][1, 3:] == -100).all())


def test_sft_validates_on_the_problems_every_rl_run_validates_on() -> None:
    """One fixed validation split: SFT (seed 5) and RL runs of any seed (the loop and the
    baselines load ``validation`` with their own seed) see the same problems."""
    from services.trainer.sft.train import _examples
    from shared.datasets import load_examples

    task = {"max_steps": 4}
    sft_val = _examples(SFTConfig(seed=5, arithmetic=task), "validation", 12, None)
    for run_seed in (0, 1, 2):  # RLTrainer / SelfTrainRun: n=eval.num_problems, seed=cfg.seed
        rl_val = load_examples("arithmetic", "validation", n=12, seed=run_seed, arithmetic=task)
        assert rl_val == sft_val
    sft_train = {e.id for e in _examples(SFTConfig(seed=5, arithmetic=task), "train", 200, None)}
    assert not sft_train & {e.id for e in sft_val}


def test_needs_a_model_or_from_scratch() -> None:
    from services.trainer.sft.train import prepare_model

    with pytest.raises(ValueError, match="from_scratch"):
        prepare_model(SFTConfig(), [])


@pytest.mark.slow
@pytest.mark.server
def test_sft_cli_from_scratch_loss_drops_and_checkpoint_loads(tmp_path: Path) -> None:
    out = tmp_path / "sft"
    sets = ["lr=3e-3", "batch_size=8", "max_steps=40", "eval_every=10", "train_problems=300"]
    sets += ["val_problems=8", "eval_max_tokens=40", "model_preset=micro", "max_seq_len=160"]
    cmd = [sys.executable, "-m", "services.cli", "sft", "--dataset", "arithmetic"]
    cmd += ["--from-scratch", "--output-dir", str(out), "--threads", "1"]
    for s in sets:
        cmd += ["--set", s]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "best validation accuracy" in proc.stdout
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [10, 20, 30, 40]
    assert rows[-1]["loss/sft"] < 0.8 * rows[0]["loss/sft"], rows
    assert all(0.0 <= r["acc/val"] <= 1.0 for r in rows)

    from services.trainer.runtime.model import load_policy, load_tokenizer

    model, tok = load_policy(out / "best"), load_tokenizer(out / "best")
    ids = torch.tensor([tok("Question: Ann has 3 pens.\nAnswer:\n")["input_ids"]])
    assert torch.isfinite(model(ids).logits).all()
