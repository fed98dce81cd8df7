"""Named starting points of a run's config (``vineppo train --preset NAME``): ``paper`` (the
defaults: the paper's Table 1 and the authors' configs), ``tiny-cpu`` (the built-in task on 2
cores) and the baselines' ``tiny-cpu-*`` variants. `config.load_config` applies one before
the config file and the ``--set`` overrides."""

from __future__ import annotations

from typing import Any

from services.trainer.overrides import merge_dicts

PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "tiny-cpu": {
        "dataset": "arithmetic",
        "iterations": 30,
        "optim": {"lr": 3e-5},
        "rollout": {
            "prompts_per_iteration": 8,
            "responses_per_prompt": 4,
            "max_response_tokens": 96,
            "top_p": 1.0,  # the full distribution (the measured demo/benchmark runs used it)
        },
        "ppo": {"mini_batch_size": 16, "micro_batch_size": 8, "kl_coef": 1e-4},
        "vine": {"k": 3, "mc_step_cap": 25},
        "eval": {
            "every": 5,
            "seeds": 1,
            "max_response_tokens": 96,
            "num_problems": 100,
            "top_p": 1.0,
        },
        "model": {"dtype": "float32"},
    },
}
"""``paper`` = the defaults (Table 1, authors' configs); ``tiny-cpu`` = built-in task, 2 cores."""

BASELINE_PRESETS: dict[str, dict[str, Any]] = {
    "tiny-cpu-restem": {
        "restem": {"train_prompts": 64, "epochs": 2, "lr": 3e-4, "batch_size": 16,
                   "micro_batch_size": 8, "max_per_prompt": 4},
        "iterations": 5,
    },
    "tiny-cpu-dpo": {
        "dpo": {"train_prompts": 256, "samples_per_prompt": 8, "pairs_per_prompt": 8,
                "epochs": 3, "batch_size": 16, "micro_batch_size": 8},
        "optim": {"lr": 1e-5},
    },
}  # fmt: skip
"""Baseline presets on top of ``tiny-cpu`` (``tiny-cpu-restem`` = ``tiny-cpu`` + these)."""


for _name, _over in BASELINE_PRESETS.items():
    PRESETS[_name] = merge_dicts(PRESETS["tiny-cpu"], _over)
