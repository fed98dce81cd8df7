"""The embedded demo (README command 1): from the committed SFT model of a tiny Llama on the
built-in task, PPO, GRPO, RLOO and VinePPO with the same budget through the real services on
loopback, then a test evaluation, ``runs/demo/report.html`` and a summary table.

No GPU, Redis or download needed: the reward service runs under uvicorn on a free port, the
rollout workers run in-process on the in-process queue (Redis when ``REDIS_URL`` is set).
A second run reuses the SFT model (``--retrain-sft`` to rebuild it).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.trainer.config import RunConfig, load_config
from services.trainer.sft.config import LENGTH_BANDS, SFT_PRESETS, SFTConfig

log = logging.getLogger(__name__)


DEMO_BAND = "2-4"
"""The demo's band of reasoning lengths (`LENGTH_BANDS`: 2–4 step problems); see docs/demo.md
for why."""
METHODS = ("ppo", "grpo", "rloo", "vine")
"""The RL methods the demo compares, in the order of its table."""
NAMES = {"ppo": "PPO", "grpo": "GRPO", "rloo": "RLOO", "vine": "VinePPO"}


def band_task(band: str) -> dict[str, int]:
    """The `ArithmeticConfig` fields of a band of `LENGTH_BANDS` (e.g. ``"4-6"``)."""
    if band not in LENGTH_BANDS:
        raise ValueError(f"unknown band {band!r}; known: {', '.join(LENGTH_BANDS)}")
    b = LENGTH_BANDS[band]
    return {"min_steps": b["min_steps"], "max_steps": b["max_steps"]}


def committed_sft() -> Path:
    """The demo's SFT model as produced by ``vineppo sft --preset demo`` (data/README.md), in
    the data folder (``$VINEPPO_DATA_DIR`` or the repo's ``data/``), so every machine starts
    RL from the same π_ref without spending the SFT minutes."""
    from shared.datasets import data_root

    return data_root() / "demo-sft"


@dataclass
class DemoBudget:
    """How much work each stage gets (``full`` for the demo, ``quick`` for CI)."""

    sft_steps: int
    """SFT optimizer steps (steps, not seconds, so every machine gets the same model)."""
    iterations: int
    prompts: int
    responses: int
    eval_every: int
    val_problems: int
    val_seeds: int
    test_problems: int
    test_seeds: int
    k: int
    value_prompts: int
    """Test prompts whose step values are probed for the value-MAE column."""
    truth_k: int
    """MC samples of the ground-truth values (the paper uses 256)."""
    probe_prompts: int = 0
    """PPO runs: validation prompts whose states probe the critic at every validation
    (``eval.value_probe_prompts``; 0 = off)."""
    top_action_states: int = 0
    """States of the final value analysis at which candidate next steps are ranked."""


BUDGETS = {
    "full": DemoBudget(sft_steps=4800, iterations=16, prompts=16, responses=4, eval_every=4,
                       val_problems=256, val_seeds=4, test_problems=500, test_seeds=4, k=3,
                       value_prompts=8, truth_k=64, probe_prompts=8, top_action_states=16),
    "quick": DemoBudget(sft_steps=40, iterations=2, prompts=4, responses=2, eval_every=1,
                        val_problems=8, val_seeds=1, test_problems=8, test_seeds=1, k=2,
                        value_prompts=2, truth_k=4, probe_prompts=2, top_action_states=2),
}  # fmt: skip


def sft_settings(budget: DemoBudget) -> dict[str, Any]:
    """The SFT config of the demo's π_ref (without its output_dir)."""
    data = {**SFT_PRESETS["demo"], "max_steps": budget.sft_steps}
    if budget.sft_steps < 200:
        data.update(train_problems=800, val_problems=budget.val_problems, eval_every=10**6)
    return data


def _stamp_matches(model_dir: Path, settings: dict[str, Any]) -> bool:
    stamp = model_dir.parent / "sft.json" if model_dir.name == "best" else model_dir / "sft.json"
    return (
        (model_dir / "config.json").is_file()
        and stamp.is_file()
        and (json.loads(stamp.read_text()) == settings)
    )


def sft_model(out: Path, budget: DemoBudget, retrain: bool) -> Path:
    """The SFT model (π_ref): ``out/sft/best`` when it was trained with today's settings,
    else the committed one (`committed_sft`) when its settings match, else trained now
    (always trained with ``retrain``)."""
    from services.trainer.sft.train import run_sft

    settings = sft_settings(budget)
    best = out / "sft" / "best"
    for candidate in (best, committed_sft()):
        if not retrain and _stamp_matches(candidate, settings):
            log.info("reusing the SFT model at %s (--retrain-sft to rebuild it)", candidate)
            return candidate
    cfg = SFTConfig.model_validate({**settings, "output_dir": str(out / "sft")})
    result = run_sft(cfg)
    (out / "sft" / "sft.json").write_text(json.dumps(settings, indent=1) + "\n")
    log.info("SFT: validation accuracy %.3f after %d steps", result.best_accuracy, result.steps)
    return result.best_dir


DEMO_RL: dict[str, dict[str, Any]] = {
    "ppo": {"optim.lr": 1e-4, "ppo.kl_coef": 3e-3},
    "grpo": {"optim.lr": 3e-4, "ppo.kl_coef": 3e-3},
    "rloo": {"optim.lr": 3e-4, "ppo.kl_coef": 1e-4},
    "vine": {"optim.lr": 1e-4, "ppo.kl_coef": 1e-4},
}
"""Each method's learning rate and KL coefficient (and PPO's critic settings), chosen by its
own sweep on validation (docs/benchmarks/learning_sweep.md, ``bench/learning.py --sweep``)."""


def run_overrides(
    algo: str,
    model: Path,
    out: Path,
    budget: DemoBudget,
    seed: int,
    rl: dict[str, Any] | None = None,
    band: str = DEMO_BAND,
) -> list[str]:
    """The ``--set`` overrides of one demo run on top of the ``tiny-cpu`` preset."""
    n = budget.prompts * budget.responses
    tuned = {**DEMO_RL.get(algo, {}), **(rl or {})}
    probe = budget.probe_prompts if algo == "ppo" else 0
    tokens = LENGTH_BANDS[band]["max_tokens"]
    return [
        f"algo={algo}",
        f"seed={seed}",
        f"model.policy={model}",
        f"output_dir={out / algo}",
        f"iterations={budget.iterations}",
        f"rollout.prompts_per_iteration={budget.prompts}",
        f"rollout.responses_per_prompt={budget.responses}",
        f"vine.k={budget.k}",
        f"eval.every={budget.eval_every}",
        f"eval.num_problems={budget.val_problems}",
        f"eval.seeds={budget.val_seeds}",
        f"ppo.mini_batch_size={n // 2 if n >= 16 else n}",
        f"eval.value_probe_prompts={probe}",
        f"rollout.max_response_tokens={tokens}",
        f"eval.max_response_tokens={tokens}",
        f"arithmetic={json.dumps(band_task(band), separators=(',', ':'))}",
        *(f"{k}={json.dumps(v)}" for k, v in tuned.items()),
    ]


def run_config(
    algo: str,
    model: Path,
    out: Path,
    budget: DemoBudget,
    seed: int,
    rl: dict[str, Any] | None = None,
    band: str = DEMO_BAND,
) -> RunConfig:
    """The config of one demo run, written to ``out/algo/config.json`` and as a command to
    ``out/algo/command.txt``."""
    overrides = run_overrides(algo, model, out, budget, seed, rl, band)
    (out / algo).mkdir(parents=True, exist_ok=True)
    (out / algo / "command.txt").write_text(
        "vineppo train --preset tiny-cpu " + " ".join(f"--set '{o}'" for o in overrides) + "\n"
    )
    cfg = load_config(preset="tiny-cpu", overrides=overrides)
    (out / algo / "config.json").write_text(cfg.model_dump_json(indent=2))  # as `vineppo train`
    return cfg


async def train_and_test(
    cfg: RunConfig,
    budget: DemoBudget,
    redis_url: str | None,
    sft_acc: dict[str, float],
    test: bool = True,
    engine: str = "auto",
    dtype: str | None = None,
) -> dict[str, Any]:
    """Train one method through the services, then (``test``) the test Pass@1 of its
    best-by-validation policy and, once per ``sft_acc``, of the SFT model; ``test=False``
    skips both (a sweep chooses on validation only). ``dtype``: the local replicas' (None =
    the engine's default)."""
    from services.trainer.client.local_services import run_services
    from services.trainer.rl.loop import RLTrainer

    out = Path(cfg.output_dir)
    # 32 prompts per job and 128 rows per decode: the tiny model decodes ~1.2× more tokens
    # per CPU second at 128 rows than at 64 (docs/benchmarks/engine_speed.md); same samples
    async with run_services(
        cfg.model.policy,
        out / "policies",
        redis_url=redis_url,
        queue_prefix=f"vineppo-demo-{cfg.algo}:",
        job_size=32,
        max_batch=128,
        engine=engine,
        dtype=dtype,
    ) as services:
        start = time.monotonic()
        await RLTrainer(cfg, services).run()
        wall = time.monotonic() - start
    row: dict[str, Any] = {"method": cfg.algo, "wall-clock (s)": wall}
    if test:
        row.update(await test_selected_async(cfg, budget, sft_acc, redis_url, engine))
    return row


async def test_selected_async(
    cfg: RunConfig,
    budget: DemoBudget,
    sft_acc: dict[str, float] | None = None,
    redis_url: str | None = None,
    engine: str = "auto",
) -> dict[str, Any]:
    """Test Pass@1 (``test_problems`` × ``test_seeds`` at the evaluation temperature) of the
    run's policy selected on validation (the paper's protocol; ``select_checkpoint``) and,
    when ``sft_acc`` is given without a ``test`` entry, of the SFT model into it."""
    from services.trainer.evaluation.runs import eval_checkpoint, select_checkpoint
    from shared.datasets import load_examples

    test_set = load_examples(
        cfg.dataset, "test", n=budget.test_problems, seed=cfg.seed, arithmetic=cfg.arithmetic
    )
    ev = cfg.eval

    async def pass_at_1(model: Path) -> tuple[float, float]:
        res = await eval_checkpoint(
            model,
            test_set,
            seeds=budget.test_seeds,
            temperature=ev.temperature,
            top_p=ev.top_p,
            max_tokens=ev.max_response_tokens,
            redis_url=redis_url,
            engine=engine,
            max_batch=128,
            progress=False,
        )
        return res.mean, res.stderr

    if sft_acc is not None and "test" not in sft_acc:
        sft_acc["test"], sft_acc["test SE"] = await pass_at_1(Path(cfg.model.policy))
    selected = select_checkpoint(Path(cfg.output_dir))
    acc, se = await pass_at_1(Path(selected["path"]))
    return {
        "test Pass@1": acc,
        "test SE": se,
        "selected version": selected["version"],
        "selected acc/val": selected["acc/val"],
    }


def test_selected(cfg: RunConfig, budget: DemoBudget) -> dict[str, Any]:
    """`test_selected_async` with the SFT model's test Pass@1 too, from synchronous code."""
    sft: dict[str, float] = {}
    row = asyncio.run(test_selected_async(cfg, budget, sft))
    return {**row, "sft Pass@1": sft["test"], "sft SE": sft["test SE"]}


def value_mae(out: Path, budget: DemoBudget, cfg: RunConfig) -> dict[str, float]:
    """MAE against ground-truth MC values (``truth_k`` samples) of step states sampled from
    the final PPO policy, per method: VinePPO's MC estimate (its K), PPO's critic and the
    GRPO/RLOO group mean (leave-one-out, the same number for both). The analysis (JSON +
    plots, top-action accuracy included) lands in ``out/ppo/value-analysis``; the report picks
    it up."""
    from services.trainer.evaluation.analysis import GROUP_BASELINE
    from services.trainer.evaluation.runs import analyze_checkpoint, load_critic, run_policy
    from services.trainer.evaluation.value_probe import ProbeConfig
    from shared.datasets import load_examples

    policy, critic_file = run_policy(out / "ppo")
    examples = load_examples(
        cfg.dataset, "test", n=budget.value_prompts, seed=cfg.seed + 1, arithmetic=cfg.arithmetic
    )
    probe = ProbeConfig(
        responses=4,
        truth_k=budget.truth_k,
        vine_k=budget.k,
        temperature=cfg.rollout.temperature,
        top_p=cfg.rollout.top_p,
        max_tokens=cfg.rollout.max_response_tokens,
        top_action_states=budget.top_action_states,
    )
    critic = load_critic(policy, critic_file) if critic_file is not None else None
    doc = asyncio.run(
        analyze_checkpoint(policy, examples, probe, out / "ppo" / "value-analysis", critic=critic)
    )
    metrics = doc["metrics"]
    names = {
        "vine": f"VinePPO K={budget.k}",
        "ppo": "PPO critic",
        "grpo": GROUP_BASELINE,
        "rloo": GROUP_BASELINE,
    }
    return {algo: metrics[name]["mae"] for algo, name in names.items() if name in metrics}


def run_demo(
    out: Path = Path("runs/demo"),
    *,
    budget: str = "full",
    retrain_sft: bool = False,
    redis_url: str | None = None,
    seed: int = 0,
    engine: str = "auto",
) -> list[dict[str, Any]]:
    """The whole demo; returns the summary rows (also printed and written to the report)."""
    from services.trainer.evaluation.report import load_run, write_report

    b = BUDGETS[budget]
    out.mkdir(parents=True, exist_ok=True)
    model = sft_model(out, b, retrain_sft)
    sft_acc: dict[str, float] = {}
    rows = []
    for algo in METHODS:
        cfg = run_config(algo, model, out, b, seed)
        rows.append(asyncio.run(train_and_test(cfg, b, redis_url, sft_acc, engine=engine)))
    maes = value_mae(out, b, run_config("ppo", model, out, b, seed))
    summary = [
        {
            "method": "SFT",
            "test Pass@1": sft_acc["test"],
            "± SE": sft_acc["test SE"],
            "value MAE": "",
            "wall-clock (s)": 0.0,
        }
    ]
    summary += [
        {
            "method": NAMES[r["method"]],
            "test Pass@1": r["test Pass@1"],
            "± SE": r["test SE"],
            "value MAE": maes.get(r["method"], ""),
            "wall-clock (s)": r["wall-clock (s)"],
        }
        for r in rows
    ]
    runs = [load_run(out / a, NAMES[a]) for a in METHODS]
    write_report(
        runs, out / "report.html", summary, title="vineppo demo: PPO, GRPO, RLOO and VinePPO"
    )
    return summary
