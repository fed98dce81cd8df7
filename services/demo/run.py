"""The embedded demo (README command 1): SFT a tiny Llama on the built-in task, then PPO and
VinePPO with the same budget through the real services on loopback, then a test evaluation,
``runs/demo/report.html`` and a summary table.

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
from services.trainer.sft.config import SFT_PRESETS, SFTConfig

log = logging.getLogger(__name__)


DEMO_TASK: dict[str, Any] = {"max_steps": 4}
"""The demo's task difficulty (`ArithmeticConfig` fields); see docs/demo.md for why."""


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
    probe_prompts: int
    """Test prompts whose step values are probed for the value-MAE column."""
    truth_k: int
    """MC samples of the ground-truth values (the paper uses 256)."""


BUDGETS = {
    "full": DemoBudget(sft_steps=2400, iterations=16, prompts=16, responses=4, eval_every=2,
                       val_problems=256, val_seeds=4, test_problems=500, test_seeds=4, k=3,
                       probe_prompts=8, truth_k=64),
    "quick": DemoBudget(sft_steps=40, iterations=2, prompts=4, responses=2, eval_every=1,
                        val_problems=8, val_seeds=1, test_problems=8, test_seeds=1, k=2,
                        probe_prompts=2, truth_k=4),
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
    "ppo": {"optim.lr": 3e-4, "ppo.kl_coef": 1e-4},
    "vine": {"optim.lr": 1e-4, "ppo.kl_coef": 1e-4},
}
"""Each method's learning rate and KL coefficient, chosen by the sweep in
docs/benchmarks/learning.md (``bench/learning.py --sweep``)."""


def run_overrides(algo: str, model: Path, out: Path, budget: DemoBudget, seed: int,
                  rl: dict[str, Any] | None = None) -> list[str]:  # fmt: skip
    """The ``--set`` overrides of one demo run on top of the ``tiny-cpu`` preset."""
    n = budget.prompts * budget.responses
    tuned = {**DEMO_RL.get(algo, {}), **(rl or {})}
    return [
        f"algo={algo}", f"seed={seed}", f"model.policy={model}", f"output_dir={out / algo}",
        f"iterations={budget.iterations}", f"rollout.prompts_per_iteration={budget.prompts}",
        f"rollout.responses_per_prompt={budget.responses}", f"vine.k={budget.k}",
        f"eval.every={budget.eval_every}", f"eval.num_problems={budget.val_problems}",
        f"eval.seeds={budget.val_seeds}", f"ppo.mini_batch_size={n // 2 if n >= 16 else n}",
        f"arithmetic={json.dumps(DEMO_TASK, separators=(',', ':'))}",
        *(f"{k}={v}" for k, v in tuned.items()),
    ]  # fmt: skip


def run_config(algo: str, model: Path, out: Path, budget: DemoBudget, seed: int,
               rl: dict[str, Any] | None = None) -> RunConfig:  # fmt: skip
    """The config of one demo run (also written to ``out/algo/command.txt`` as a command)."""
    overrides = run_overrides(algo, model, out, budget, seed, rl)
    (out / algo).mkdir(parents=True, exist_ok=True)
    (out / algo / "command.txt").write_text(
        "vineppo train --preset tiny-cpu " + " ".join(f"--set '{o}'" for o in overrides) + "\n"
    )
    return load_config(preset="tiny-cpu", overrides=overrides)


async def train_and_test(
    cfg: RunConfig,
    budget: DemoBudget,
    redis_url: str | None,
    sft_acc: dict[str, float],
    test: bool = True,
    engine: str = "auto",
) -> dict[str, Any]:
    """Train one method through the services, then its test Pass@1 (and the SFT model's);
    ``test=False`` skips both test evaluations (a sweep chooses on validation only)."""
    from services.trainer.client.stack import run_services
    from services.trainer.evaluation.evaluate import evaluate
    from services.trainer.rl.loop import RLTrainer
    from shared.datasets import load_examples

    out = Path(cfg.output_dir)
    test_set = load_examples(cfg.dataset, "test", n=budget.test_problems, seed=cfg.seed,
                             arithmetic=cfg.arithmetic)  # fmt: skip
    # 32 prompts per job and 128 rows per decode: the tiny model decodes ~1.2× more tokens
    # per CPU second at 128 rows than at 64 (docs/benchmarks/engine_speed.md); same samples
    async with run_services(cfg.model.policy, out / "policies", redis_url=redis_url,
                            queue_prefix=f"vineppo-demo-{cfg.algo}:", job_size=32,
                            max_batch=128, engine=engine) as services:  # fmt: skip
        trainer = RLTrainer(cfg, services)
        prompts = [trainer.prompt(x) for x in test_set]

        async def test_acc() -> tuple[float, float]:
            res = await evaluate(services.queue, services.grader, test_set, prompts,
                                 version=trainer.version, seeds=budget.test_seeds,
                                 temperature=cfg.eval.temperature, top_p=cfg.eval.top_p,
                                 max_tokens=cfg.eval.max_response_tokens)  # fmt: skip
            return res.mean, res.stderr

        if test and "test" not in sft_acc:  # the SFT model = every method's version 0
            await trainer.push()
            sft_acc["test"], sft_acc["test SE"] = await test_acc()
        start = time.monotonic()
        await trainer.run()
        wall = time.monotonic() - start
        acc, se = await test_acc() if test else (float("nan"), float("nan"))
    return {"method": cfg.algo, "test Pass@1": acc, "test SE": se, "wall-clock (s)": wall}


def value_mae(out: Path, budget: DemoBudget, cfg: RunConfig) -> dict[str, float]:
    """MAE against ground-truth MC values (``truth_k`` samples) of step states sampled from
    the final PPO policy: VinePPO's MC estimate (its K) vs PPO's critic. The analysis (JSON +
    plots) lands in ``out/ppo/value-analysis`` and the report picks it up."""
    from services.trainer.evaluation.runs import analyze_checkpoint, load_critic, run_policy
    from services.trainer.evaluation.value_probe import ProbeConfig
    from shared.datasets import load_examples

    policy, critic_file = run_policy(out / "ppo")
    examples = load_examples(cfg.dataset, "test", n=budget.probe_prompts, seed=cfg.seed + 1,
                             arithmetic=cfg.arithmetic)  # fmt: skip
    probe = ProbeConfig(
        responses=4,
        truth_k=budget.truth_k,
        vine_k=budget.k,
        temperature=cfg.rollout.temperature,
        max_tokens=cfg.rollout.max_response_tokens,
        top_action_states=0,
    )
    critic = load_critic(policy, critic_file) if critic_file is not None else None
    doc = asyncio.run(analyze_checkpoint(policy, examples, probe, out / "ppo" / "value-analysis",
                                         critic=critic))  # fmt: skip
    metrics = doc["metrics"]
    maes = {"vine": metrics[f"VinePPO K={budget.k}"]["mae"]}
    if "PPO critic" in metrics:
        maes["ppo"] = metrics["PPO critic"]["mae"]
    return maes


def run_demo(
    out: Path = Path("runs/demo"), *, budget: str = "full", retrain_sft: bool = False,
    redis_url: str | None = None, seed: int = 0, engine: str = "auto",
) -> list[dict[str, Any]]:  # fmt: skip
    """The whole demo; returns the summary rows (also printed and written to the report)."""
    from services.trainer.evaluation.report import load_run, write_report

    b = BUDGETS[budget]
    out.mkdir(parents=True, exist_ok=True)
    model = sft_model(out, b, retrain_sft)
    sft_acc: dict[str, float] = {}
    rows = []
    for algo in ("ppo", "vine"):
        cfg = run_config(algo, model, out, b, seed)
        rows.append(asyncio.run(train_and_test(cfg, b, redis_url, sft_acc, engine=engine)))
    maes = value_mae(out, b, run_config("ppo", model, out, b, seed))
    names = {"ppo": "PPO", "vine": "VinePPO"}
    summary = [{"method": "SFT", "test Pass@1": sft_acc["test"], "± SE": sft_acc["test SE"],
                "value MAE": "", "wall-clock (s)": 0.0}]  # fmt: skip
    summary += [{"method": names[r["method"]], "test Pass@1": r["test Pass@1"],
                 "± SE": r["test SE"], "value MAE": maes.get(r["method"], ""),
                 "wall-clock (s)": r["wall-clock (s)"]} for r in rows]  # fmt: skip
    runs = [load_run(out / a, names[a]) for a in ("ppo", "vine")]
    write_report(runs, out / "report.html", summary, title="vineppo demo: PPO vs VinePPO")
    return summary
