"""The learning-rate schedule, a pure function of the optimizer step."""

from __future__ import annotations


def lr_multiplier(
    step: int, *, total_steps: int, warmup_steps: int, end_ratio: float = 0.0, power: float = 1.0
) -> float:
    """LR / peak LR at optimizer ``step`` (0-based): linear warm-up, then polynomial decay.

    1) warm-up: step / warmup_steps; 2) decay: end + (1 − end)·(1 − progress)^power, with
    progress = (step − warmup) / (total − warmup); 3) after the end: end_ratio.
    """
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    if step >= total_steps:
        return end_ratio
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    decay: float = (1.0 - progress) ** power
    return end_ratio + (1.0 - end_ratio) * decay
