"""A tiny Llama SFT'd on the built-in arithmetic task (seconds), shared by the eval, analysis
and report tests: built once per pytest session under its base temp dir."""

from __future__ import annotations

from pathlib import Path

import pytest


def tiny_sft_model(factory: pytest.TempPathFactory) -> Path:
    from services.trainer.sft.config import SFTConfig
    from services.trainer.sft.train import run_sft

    out = factory.getbasetemp() / "shared-tiny-sft"
    if (out / "best" / "config.json").is_file():
        return out / "best"
    cfg = SFTConfig(
        dataset="arithmetic",
        from_scratch=True,
        output_dir=str(out),
        lr=3e-3,
        batch_size=16,
        max_steps=60,
        train_problems=400,
        val_problems=8,
        eval_every=60,
        eval_max_tokens=40,
        max_seq_len=128,
    )
    return run_sft(cfg, progress=False).best_dir
