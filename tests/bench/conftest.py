"""Fixtures of the benchmark tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.trainer.runtime.model import build_tiny_model
from shared.prompts import format_prompt
from shared.tasks.arithmetic import ArithmeticConfig, generate


@pytest.fixture()
def micro_model(tmp_path: Path) -> Path:
    """A micro Llama (random init) with the built-in task's tokenizer: a benchmark's model
    stand-in, sized for seconds."""
    examples = generate(ArithmeticConfig(), "train", 100, seed=0)
    texts = [format_prompt(e.question) + e.solution for e in examples]
    return build_tiny_model(tmp_path / "m", texts, preset="micro", seed=0)
