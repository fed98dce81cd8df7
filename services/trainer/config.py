"""The run config: one typed model per component, defaults = the VinePPO paper's Table 1
(and the authors' configs where the paper is silent: top_p 0.9, MC step cap by dataset).

Every field is documented (the docstrings become the field descriptions). Load a run with
`load_config(path, overrides, preset=...)`: preset values first, then the YAML/JSON file,
then ``section.field=value`` overrides (values parsed as YAML). Derived values (episodes per
iteration, optimizer steps, warm-up steps) are computed and checked once in `RunConfig`;
``auto`` values (advantage whitening per method, MC step cap per dataset) are resolved there.
Override parsing lives in `services.trainer.overrides`; the LR schedule in
`services.trainer.algos.schedule`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from services.trainer.overrides import merge_dicts, parse_overrides
from services.trainer.presets import PRESETS


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, frozen=True)


class OptimConfig(_Section):
    lr: float = Field(default=1e-6, gt=0)
    """AdamW peak learning rate (paper: 1e-6)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW (β1, β2)."""
    weight_decay: float = Field(default=0.0, ge=0)
    """AdamW weight decay (paper: 0)."""
    grad_clip: float = Field(default=1.0, gt=0)
    """Clip the global gradient norm to this value."""
    warmup_ratio: float = Field(default=0.03, ge=0, lt=1)
    """Share of all optimizer steps spent in linear warm-up (paper: 3 %)."""
    lr_end: float = Field(default=0.0, ge=0)
    """Learning rate reached at the last step by the polynomial decay."""
    decay_power: float = Field(default=1.0, gt=0)
    """Power of the polynomial decay (1 = linear)."""


class RolloutConfig(_Section):
    prompts_per_iteration: int = Field(default=64, ge=1)
    """Prompts sampled per RL iteration (paper: 64)."""
    responses_per_prompt: int = Field(default=8, ge=1)
    """Responses sampled per prompt (paper: 8), so 512 episodes per iteration."""
    temperature: float = Field(default=0.6, gt=0)
    """Sampling temperature of the responses; PPO log-probs use logits / this."""
    top_p: float = Field(default=0.9, gt=0, le=1)
    """Nucleus sampling threshold of the responses and of VinePPO's MC continuations (the
    authors' configs: 0.9; the paper does not say). PPO log-probs still use the full softmax."""
    max_response_tokens: int = Field(default=1024, ge=1)
    """Longest response; a truncated response gets reward 0."""
    few_shot: int = Field(default=0, ge=0, le=16)
    """Worked examples (the first ones of the training split) put before every training and
    validation prompt; 0 (the paper) for SFT models, a few for a base or instruct model
    that has not been SFT'd on the dataset."""


class PPOConfig(_Section):
    mini_batch_size: int = Field(default=64, ge=1)
    """Episodes per optimizer step (paper: 64); advantages are whitened per mini-batch."""
    micro_batch_size: int = Field(default=8, ge=1)
    """Episodes per forward/backward pass per rank (gradient accumulation fills the rest)."""
    epochs: int = Field(default=2, ge=1)
    """Passes over each iteration's episodes (paper: 2)."""
    clip_eps: float = Field(default=0.2, gt=0)
    """PPO ratio clip ε."""
    value_clip_eps: float = Field(default=0.2, gt=0)
    """Value-loss clip ε′ (PPO critic only)."""
    critic_lr: float | None = Field(default=None, gt=0)
    """Peak learning rate of the critic's AdamW (null = ``optim.lr``, as the paper)."""
    critic_lr_decay: bool = True
    """Decay the critic's learning rate like the policy's (true, the paper); false = constant
    after the warm-up steps, so the critic keeps tracking a policy that keeps changing."""
    critic_epochs: int | None = Field(default=None, ge=1)
    """Passes of critic updates over each iteration's episodes (null = ``epochs``)."""
    critic_warmup_iterations: int = Field(default=0, ge=0)
    """Value warm-up: before the first policy update, this many iterations of critic-only
    updates on fresh responses of the SFT policy (0 = none, as the paper). Their time is part
    of the run's wall-clock (``time/critic_warmup`` on the iteration-0 row)."""
    critic_init: float | None = 0.5
    """Value-head initialisation: a number v = zero weights and bias v, so every state starts
    at V = v (0.5, the middle of the [0, 1] reward range: this project's default); null = the
    authors' (random weights of std 1/√(H+1): initial values spread about the last hidden
    state's RMS, on the demo model far outside [0, 1]; PPO's mean validation Pass@1 0.837
    with it against 0.939 with 0.5 in docs/benchmarks/learning_sweep.md)."""
    kl_coef: float = Field(default=1e-4, ge=0)
    """β of the k3 KL to π_ref added to the loss (fixed)."""
    kl_reduction: Literal["sequence_sum", "token_mean"] = "sequence_sum"
    """How the per-token k3 enters the loss: ``sequence_sum`` = β·Σ_t k3 per response, averaged
    over responses (the authors' code); ``token_mean`` = β·mean of k3 over all response tokens
    (about L× weaker for L-token responses)."""
    kl_clamp: float = Field(default=10.0, gt=0)
    """Per-token KL is clamped to [0, kl_clamp]."""
    ratio_skip: float = Field(default=10.0, gt=1)
    """Skip an optimizer step whose mean ratio π_θ/π_θk exceeds this."""
    whiten_advantages: bool | Literal["auto"] = "auto"
    """Normalise token advantages to zero mean / unit variance over each mini-batch (all ranks
    together) before the loss. ``auto`` = the method's own rule (`WHITEN_BY_ALGO`): on for
    ``vine`` and ``ppo`` (the authors whiten both), off for ``grpo`` and ``rloo``, whose
    advantages are already normalised per group (whitening again would turn the 0 of an
    all-wrong group into a push on every token)."""
    gamma: float = Field(default=1.0, ge=0, le=1)
    """Discount of GAE (paper: 1)."""
    lam: float = Field(default=1.0, ge=0, le=1)
    """λ of GAE (paper: 1)."""


class VineConfig(_Section):
    k: int = Field(default=9, ge=1)
    """Monte Carlo continuations per step-boundary state (paper: 9; 1 still works)."""
    mc_step_cap: Annotated[int, Field(ge=1)] | Literal["auto"] | None = "auto"
    """Estimate values only for the first this-many steps; null = no cap; ``auto`` = the
    dataset's rule (`MC_STEP_CAP_BY_DATASET`: the authors cap GSM8K at 25 and MATH not at all)."""
    reuse_returns: bool = False
    """Count the batch's own returns as MC samples: a state that n responses pass through
    gets only max(k − (n − 1), 0) continuations, and each response's baseline pools the
    others' returns (never its own) with them (docs/algorithms.md, Reusing the batch's
    returns). Unbiased; off by default, as in the paper."""


class EvalConfig(_Section):
    every: int = Field(default=10, ge=1)
    """Evaluate on the validation split every this-many iterations."""
    temperature: float = Field(default=0.35, ge=0)
    """Evaluation sampling temperature (paper: 0.35)."""
    seeds: int = Field(default=16, ge=1)
    """Samples per problem averaged into Pass@1 (paper: 16)."""
    top_p: float = Field(default=0.9, gt=0, le=1)
    """Nucleus sampling threshold of validation samples (the authors' eval configs: 0.9)."""
    max_response_tokens: int = Field(default=1024, ge=1)
    """Longest evaluation response."""
    num_problems: int | None = Field(default=None, ge=1)
    """Validation problems used (null = the whole split)."""
    value_probe_prompts: int = Field(default=0, ge=0)
    """At every validation, probe value estimates on fresh responses (at the rollout
    temperature) to this many validation prompts: MC ground truth of every step state, and
    against it the PPO critic (``value/critic_mae``, ``value/critic_ev``) and the group-mean
    baseline of GRPO/RLOO (``value/group_mae``); 0 = off."""
    value_probe_k: int = Field(default=32, ge=2)
    """MC continuations per state of the probe's ground truth."""


class DistConfig(_Section):
    zero_stage: Literal[0, 1, 2, 3] = 0
    """DeepSpeed ZeRO stage (0 = plain data parallel)."""
    world_size: int = Field(default=1, ge=1)
    """Data-parallel ranks the run is checked against (the launcher sets the real one)."""
    cpu_shm_comm: bool = False
    """On CPU, let DeepSpeed JIT-compile its shared-memory all-reduce op (about a minute of
    C++ build on first use); off = plain gloo collectives."""


class ModelConfig(_Section):
    policy: str = ""
    """Directory of the SFT model (π_ref and the initial policy), saved with save_pretrained."""
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """Training precision. ``auto``: bfloat16 on CUDA, float32 on CPU. ``bfloat16``: also on a
    CPU with native bfloat16 (AVX-512 BF16 or AMX), as float32 weights with bfloat16 autocast;
    a CPU without it trains in float32. Local rollout replicas serve in the same dtype
    (services.trainer.runtime.model.precision)."""


class RestEMConfig(_Section):
    """Iterative rejection finetuning (RestEM; VinePPO paper, Table 2)."""

    samples_per_prompt: int = Field(default=8, ge=1)
    """Responses sampled per training prompt each iteration (paper: 8)."""
    train_prompts: int | None = Field(default=None, ge=1)
    """Training prompts sampled each iteration (null = the whole training split)."""
    epochs: int = Field(default=8, ge=1)
    """Finetuning epochs per iteration (the authors' RestEM configs: 8); a checkpoint is
    validated after each one and training stops at the first drop."""
    lr: float = Field(default=1e-6, gt=0)
    """AdamW peak learning rate of each iteration's finetuning (linear warm-up and decay)."""
    batch_size: int = Field(default=64, ge=1)
    """Kept responses per optimizer step."""
    micro_batch_size: int = Field(default=8, ge=1)
    """Responses per forward/backward pass (gradient accumulation fills the rest)."""
    max_per_prompt: int | None = Field(default=None, ge=1)
    """Keep at most this many distinct correct responses per prompt (null = all)."""
    stop_on_drop: bool = True
    """End the run early when an iteration's selected checkpoint validates lower than the
    previous iteration's (the paper stops RestEM when validation accuracy drops)."""


class DPOConfig(_Section):
    """DPO-Positive on pairs from one offline round sampled from the SFT model (Pal et al.
    2024; VinePPO paper, Table 3, and the authors' configs). ``iterations`` is not used."""

    beta: float | None = Field(default=None, gt=0)
    """DPO β; null = the paper's value for the dataset (MATH 0.1, GSM8K and arithmetic 0.3)."""
    lam: float = Field(default=50.0, ge=0)
    """λ of the positive penalty λ·max(0, log π_ref(y_w) − log π_θ(y_w)) (paper: 50)."""
    train_prompts: int | None = Field(default=None, ge=1)
    """Training prompts of the round (null = the whole training split, the paper)."""
    samples_per_prompt: int = Field(default=64, ge=2)
    """Responses sampled from the SFT model per prompt to build pairs from (paper: 64)."""
    pairs_per_prompt: int = Field(default=64, ge=1)
    """At most this many (correct, incorrect) pairs per prompt (paper: 64)."""
    epochs: int = Field(default=3, ge=1)
    """Passes over the round's pairs (the authors' configs: 3); validated after each one."""
    batch_size: int = Field(default=64, ge=1)
    """Pairs per optimizer step."""
    micro_batch_size: int = Field(default=8, ge=1)
    """Pairs per forward/backward pass (gradient accumulation fills the rest)."""

    def resolved_beta(self, dataset: str) -> float:
        """β for ``dataset``: the configured value, else 0.1 on MATH and 0.3 otherwise."""
        if self.beta is not None:
            return self.beta
        return 0.1 if dataset == "math" else 0.3


PAPER_ITERATIONS: dict[str, int] = {"restem": 10, "gsm8k": 650, "math": 1000}
"""``iterations`` when a config does not set it: by method (``restem``: the paper's 10), else
by dataset (the authors' configs: 650 on GSM8K, 1000 on MATH); 1000 otherwise."""
WHITEN_BY_ALGO: dict[str, bool] = {"vine": True, "ppo": True, "grpo": False, "rloo": False}
"""``ppo.whiten_advantages: auto`` per method (the others do not use it: True)."""
MC_STEP_CAP_BY_DATASET: dict[str, int | None] = {"gsm8k": 25, "math": None, "arithmetic": 25}
"""``vine.mc_step_cap: auto`` per dataset: the authors' GSM8K config caps at 25 steps, their
MATH config has no cap; the built-in task follows GSM8K (its responses have few steps)."""


def _section_dict(value: Any) -> dict[str, Any]:
    return value.model_dump() if isinstance(value, BaseModel) else dict(value or {})


class RunConfig(_Section):
    algo: Literal["vine", "ppo", "grpo", "rloo", "restem", "dpo_positive"] = "vine"
    """Method: vine (MC values), ppo (critic + GAE), grpo, rloo (the RL loop), restem
    (iterative rejection finetuning) or dpo_positive (DPO-Positive on self-generated pairs)."""
    dataset: Literal["gsm8k", "math", "arithmetic"] = "gsm8k"
    """Training/validation data (arithmetic = the built-in generated task)."""
    arithmetic: dict[str, Any] = Field(default_factory=dict)
    """Built-in task difficulty (``ArithmeticConfig`` fields, e.g. ``max_steps: 4``); use the
    same values the SFT model was trained with."""
    seed: int = 0
    """Seed of data order, sampling and initialisation."""
    iterations: int = Field(default=1000, ge=1)
    """RL iterations (each: sample, estimate, train, push weights). Unset: the authors' count
    for the method and dataset (`PAPER_ITERATIONS`: RestEM 10; PPO-style 650 on GSM8K, 1000
    on MATH and the built-in task)."""
    output_dir: str = "runs/default"
    """Checkpoints, metrics.jsonl and TensorBoard events go here."""
    optim: OptimConfig = OptimConfig()
    """Optimizer and LR schedule."""
    rollout: RolloutConfig = RolloutConfig()
    """Response sampling."""
    ppo: PPOConfig = PPOConfig()
    """PPO update."""
    vine: VineConfig = VineConfig()
    """VinePPO Monte Carlo values."""
    eval: EvalConfig = EvalConfig()
    """Validation."""
    dist: DistConfig = DistConfig()
    """DeepSpeed / data parallelism."""
    model: ModelConfig = ModelConfig()
    """Model locations and dtype."""
    restem: RestEMConfig = RestEMConfig()
    """RestEM (algo=restem)."""
    dpo: DPOConfig = DPOConfig()
    """DPO-Positive (algo=dpo_positive)."""

    @property
    def episodes_per_iteration(self) -> int:
        return self.rollout.prompts_per_iteration * self.rollout.responses_per_prompt

    @property
    def steps_per_iteration(self) -> int:
        """Optimizer steps per iteration: epochs × episodes / mini-batch."""
        return self.ppo.epochs * (self.episodes_per_iteration // self.ppo.mini_batch_size)

    @property
    def total_steps(self) -> int:
        return self.iterations * self.steps_per_iteration

    @property
    def warmup_steps(self) -> int:
        return math.ceil(self.optim.warmup_ratio * self.total_steps)

    @property
    def grad_accum_steps(self) -> int:
        """Micro-batches per optimizer step on each rank."""
        return self.ppo.mini_batch_size // (self.ppo.micro_batch_size * self.dist.world_size)

    @model_validator(mode="before")
    @classmethod
    def _resolve_auto(cls, data: Any) -> Any:
        """Replace ``auto`` by the method's / dataset's value, so a loaded config holds only
        concrete ``ppo.whiten_advantages`` and ``vine.mc_step_cap``."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        algo = data.get("algo", cls.model_fields["algo"].default)
        dataset = data.get("dataset", cls.model_fields["dataset"].default)
        ppo, vine = _section_dict(data.get("ppo")), _section_dict(data.get("vine"))
        if ppo.get("whiten_advantages", "auto") == "auto":
            ppo["whiten_advantages"] = WHITEN_BY_ALGO.get(algo, True)
        if vine.get("mc_step_cap", "auto") == "auto":
            vine["mc_step_cap"] = MC_STEP_CAP_BY_DATASET.get(dataset, 25)
        if "iterations" not in data:
            data["iterations"] = PAPER_ITERATIONS.get(algo, PAPER_ITERATIONS.get(dataset, 1000))
        data["ppo"], data["vine"] = ppo, vine
        return data

    @model_validator(mode="after")
    def _check_derived(self) -> RunConfig:
        eps, mb = self.episodes_per_iteration, self.ppo.mini_batch_size
        if eps % mb:
            raise ValueError(
                f"episodes per iteration ({self.rollout.prompts_per_iteration} prompts × "
                f"{self.rollout.responses_per_prompt} responses = {eps}) must be a multiple of "
                f"ppo.mini_batch_size ({mb}); change one of them"
            )
        per_step = self.ppo.micro_batch_size * self.dist.world_size
        if mb % per_step:
            raise ValueError(
                f"ppo.mini_batch_size ({mb}) must be a multiple of ppo.micro_batch_size × "
                f"world size ({self.ppo.micro_batch_size} × {self.dist.world_size} = {per_step})"
            )
        if self.algo in ("grpo", "rloo") and self.rollout.responses_per_prompt < 2:
            raise ValueError(f"{self.algo} needs rollout.responses_per_prompt >= 2")
        if self.eval.value_probe_prompts and self.dist.zero_stage == 3:
            raise ValueError(
                "eval.value_probe_prompts needs the whole critic on rank 0: "
                "set it to 0 under ZeRO-3"
            )
        for name, sec in (("restem", self.restem), ("dpo", self.dpo)):
            if sec.batch_size % (sec.micro_batch_size * self.dist.world_size):
                raise ValueError(
                    f"{name}.batch_size ({sec.batch_size}) must be a multiple of "
                    f"{name}.micro_batch_size × world size ({sec.micro_batch_size} × "
                    f"{self.dist.world_size})"
                )
        return self


def load_config(
    path: Path | None = None, overrides: list[str] | None = None, preset: str | None = None
) -> RunConfig:
    """Preset, then the YAML/JSON file at ``path``, then dotted overrides -> a checked RunConfig."""
    data: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
        data = merge_dicts(data, PRESETS[preset])
    if path is not None:
        text = Path(path).read_text(encoding="utf-8")
        loaded = json.loads(text) if Path(path).suffix == ".json" else yaml.safe_load(text)
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping at the top level")
        data = merge_dicts(data, loaded)
    data = merge_dicts(data, parse_overrides(overrides or []))
    return RunConfig.model_validate(data)
