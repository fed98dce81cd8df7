"""The SFT config (``vineppo sft``, the demo's π_ref): one typed section and its presets."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from services.trainer.config import _Section


class SFTConfig(_Section):
    """Supervised finetuning on gold solutions (makes π_ref)."""

    dataset: Literal["gsm8k", "math", "arithmetic"] = "arithmetic"
    """Dataset whose gold solutions are the targets."""
    arithmetic: dict[str, Any] = Field(default_factory=dict)
    """``ArithmeticConfig`` fields for the built-in task (e.g. ``{max_steps: 4}``); empty =
    the defaults of ``shared.datasets.load_examples``."""
    slip_rate: float = Field(default=0.0, ge=0, lt=1)
    """Built-in task only: chance that a result carried into the next line (or the answer) of
    an SFT target is copied one too high (``shared.tasks.arithmetic.with_slips``): a careless
    π_ref whose mistakes sit at identifiable steps."""
    model: str = ""
    """Directory of the model to finetune (save_pretrained format); empty with from_scratch."""
    from_scratch: bool = False
    """Build a tiny Llama-style model + tokenizer from the task's text first."""
    model_preset: str = "tiny"
    """Size preset of the from-scratch model (see services.trainer.runtime.model.PRESETS)."""
    output_dir: str = "runs/sft"
    """The best checkpoint goes to ``output_dir/best``, metrics to ``metrics.jsonl``."""
    lr: float = Field(default=1e-5, gt=0)
    """AdamW peak learning rate."""
    weight_decay: float = Field(default=0.0, ge=0)
    """AdamW weight decay."""
    warmup_ratio: float = Field(default=0.03, ge=0, lt=1)
    """Share of steps in linear warm-up before linear decay."""
    grad_clip: float = Field(default=1.0, gt=0)
    """Global gradient-norm clip."""
    batch_size: int = Field(default=16, ge=1)
    """Examples per optimizer step."""
    epochs: float = Field(default=3.0, gt=0)
    """Passes over the training examples (fractions allowed)."""
    max_steps: int | None = Field(default=None, ge=1)
    """Stop after this many optimizer steps (overrides epochs)."""
    time_budget_s: float | None = Field(default=None, gt=0)
    """Stop training after this many seconds (then a final evaluation)."""
    max_seq_len: int = Field(default=512, ge=8)
    """Prompt + response tokens kept per example (longer ones are cut on the right)."""
    train_problems: int | None = Field(default=None, ge=1)
    """Use only the first this-many training examples (null = all)."""
    val_problems: int = Field(default=200, ge=1)
    """Validation problems scored by greedy decoding."""
    eval_every: int = Field(default=200, ge=1)
    """Evaluate (and maybe save the best checkpoint) every this-many steps."""
    eval_max_tokens: int = Field(default=256, ge=1)
    """Longest greedy validation response."""
    eval_batch_size: int = Field(default=64, ge=1)
    """Prompts decoded together during validation."""
    seed: int = 0
    """Seed of initialisation, data order and the generated task."""
    zero_stage: Literal[0, 1, 2, 3] = 0
    """DeepSpeed ZeRO stage."""
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """Training precision, as the RL runs' ``model.dtype``: ``auto`` is bfloat16 on CUDA and
    float32 on CPU; ``bfloat16`` on a CPU with native bfloat16 trains float32 weights under
    bfloat16 autocast (services.trainer.runtime.model.precision)."""


SFT_PRESETS: dict[str, dict[str, Any]] = {
    "tiny-cpu": {
        "dataset": "arithmetic",
        "from_scratch": True,
        "lr": 3e-3,
        "batch_size": 16,
        "max_steps": 2400,
        "max_seq_len": 256,
        "train_problems": 5000,
        "val_problems": 100,
        "eval_every": 300,
        "eval_max_tokens": 96,
    },
}
SFT_PRESETS["demo"] = {
    **SFT_PRESETS["tiny-cpu"],
    "arithmetic": {"max_steps": 4},
    "slip_rate": 0.4,
    "eval_every": 400,
    "max_steps": 4800,
    "train_problems": 20_000,
}
LENGTH_BANDS: dict[str, dict[str, Any]] = {
    "2-4": {"min_steps": 2, "max_steps": 4, "slip_rate": 0.4, "max_tokens": 96},
    "4-6": {"min_steps": 4, "max_steps": 6, "slip_rate": 0.31, "max_tokens": 128},
    "6-8": {"min_steps": 6, "max_steps": 8, "slip_rate": 0.27, "max_tokens": 128},
}
"""Bands of reasoning length of the built-in task: problems of min..max steps, the slip rate
of their SFT targets and the response budget. The slip rates make a slip-free solution equally
likely (≈ 0.31) in every band when sampled at the rollout temperature 0.6, which sharpens a
slip probability s to s^(1/T) / (s^(1/T) + (1 − s)^(1/T)) (0.40 → 0.34, 0.31 → 0.21, 0.27 →
0.16 per carried result), so that only the length changes between bands. (Rates chosen for
T = 1, 0.26 and 0.20, gave 0.44 and 0.48 at T = 0.6, as this formula predicts.) Band 2-4
is the demo's."""
for _band, _b in list(LENGTH_BANDS.items())[1:]:
    SFT_PRESETS[f"length-{_band}"] = {
        **SFT_PRESETS["demo"],
        "slip_rate": _b["slip_rate"],
        "eval_max_tokens": _b["max_tokens"],
        "arithmetic": {"min_steps": _b["min_steps"], "max_steps": _b["max_steps"]},
    }
"""SFT starting points. ``demo``: the demo's careless π_ref (2–4 step problems; in the SFT
targets a result carried into the next line is copied one too high 40 % of the time;
docs/demo.md says why), 4,800 steps on 20,000 problems: greedy validation Pass@1 0.93 (the
arithmetic is known; the slips are what RL can remove). ``length-4-6``, ``length-6-8``: the
same recipe on the longer bands of `LENGTH_BANDS` with their slip rates, the starting points
of ``bench/credit_by_length.py`` (its band 2-4 uses ``demo``). ``tiny-cpu``: the built-in
task's tiny model from scratch, validation accuracy 2 % / 11 % / 68 % / 94 % after 600 /
1200 / 1800 / 2400 steps (about 14 minutes of one CPU core in all; set ``time_budget_s`` to
stop earlier, the LR then decays over the budget)."""
