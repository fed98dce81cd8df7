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
SFT_PRESETS["demo"] = {**SFT_PRESETS["tiny-cpu"], "arithmetic": {"max_steps": 4},
                       "slip_rate": 0.4, "eval_every": 400}  # fmt: skip
"""SFT starting points. ``demo``: the demo's careless π_ref (2–4 step problems; in the SFT
targets a result carried into the next line is copied one too high 40 % of the time;
docs/demo.md says why). ``tiny-cpu``: the built-in task's tiny model from scratch,
validation accuracy 2 % / 11 % / 68 % / 94 % after 600 / 1200 / 1800 / 2400 steps (about
14 minutes of one CPU core in all; set ``time_budget_s`` to stop earlier, the LR then
decays over the budget)."""
