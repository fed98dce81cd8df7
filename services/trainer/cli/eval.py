"""`vineppo eval`, `vineppo analyze-values` and `vineppo sweep` (registered by ``cli/__init__``).

    vineppo eval --checkpoint runs/x/best --split test --seeds 16          # Pass@1 ± spread
    vineppo eval --run runs/x --select-on validation                      # best-by-val, on test
    vineppo analyze-values --run runs/ppo --truth-k 256                   # JSON + PNGs
    vineppo sweep --k 1,3,9 --preset tiny-cpu --set model.policy=runs/sft/best --out runs/k

The work (services started for the checkpoint, checkpoint selection with ``--select-on
validation``) is in ``services/trainer/evaluation/runs.py``.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any

import typer

from services.trainer.evaluation.runs import (
    analyze_checkpoint,
    eval_checkpoint,
    load_critic,
    run_config,
    run_policy,
    select_checkpoint,
)
from shared.logs import setup_logging
from shared.settings import EngineKind


def register_eval(app: typer.Typer) -> None:
    app.command("eval")(eval_cmd)
    app.command("analyze-values")(analyze_values_cmd)
    app.command("sweep")(sweep_cmd)


# -- the sweep's plan ---------------------------------------------------------------
def sweep_plan(
    param: str, values: list[str], out: Path, *, algo: str, preset: str | None, sets: list[str]
) -> list[tuple[str, list[str]]]:
    """(run name, argv) of each run of a sweep over ``vine.k`` or ``rollout.temperature``."""
    field = {"k": "vine.k", "temperature": "rollout.temperature"}[param]
    plan = []
    for v in values:
        name = f"{param}-{v}"
        argv = [
            sys.executable,
            "-m",
            "services.cli",
            "train",
            "--algo",
            algo,
            "--output-dir",
            str(Path(out) / name),
        ]
        argv += ["--preset", preset] if preset else []
        for s in [*sets, f"{field}={v}"]:
            argv += ["--set", s]
        plan.append((name, argv))
    return plan


# -- commands ----------------------------------------------------------------------------
_REDIS = typer.Option(None, envvar="VINEPPO_TRAINER_REDIS_URL", help="Redis queue; unset = "
                      "in-process (a private key prefix either way).")  # fmt: skip
_REWARD = typer.Option(None, envvar="VINEPPO_TRAINER_REWARD_URL", help="Reward service; unset = "
                       "start one on loopback.")  # fmt: skip
_REPLICAS = typer.Option(1, min=1, help="Rollout workers (torch engines) in this process.")
_THREADS = typer.Option(None, min=1, help="torch CPU threads.")
_ENGINE = typer.Option("auto", envvar="VINEPPO_TRAINER_ENGINE", help="Local replicas' engine: "
                       "auto (by model size) | torch | vllm.")  # fmt: skip


def _start(threads: int | None) -> None:
    import torch

    setup_logging()
    if threads:
        torch.set_num_threads(threads)


def _examples(dataset: str, split: str, n: int | None, seed: int, cfg: Any) -> list[Any]:
    from shared.datasets import load_examples

    arithmetic = getattr(cfg, "arithmetic", None) if cfg is not None else None
    try:
        return load_examples(dataset, split, n=n, seed=seed, arithmetic=arithmetic or None)
    except (ValueError, FileNotFoundError) as e:
        raise typer.BadParameter(str(e)) from e


def _shots(dataset: str, cfg: Any) -> list[Any]:
    """The run's few-shot worked examples (``rollout.few_shot`` first training examples)."""
    n = int(getattr(cfg.rollout, "few_shot", 0)) if cfg is not None else 0
    return _examples(dataset, "train", None, cfg.seed, cfg)[:n] if n else []  # as the loop


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    typer.echo(f"wrote {path}")


def eval_cmd(
    checkpoint: Path | None = typer.Option(None, help="Model dir (save_pretrained) to evaluate."),
    run: Path | None = typer.Option(None, help="Run dir: evaluate its selected checkpoint."),
    select_on: str = typer.Option(
        "validation", help="With --run: validation (best acc/val) | last (the newest policy)."
    ),
    split: str = typer.Option("test", help="train | validation | test."),
    dataset: str | None = typer.Option(
        None, help="gsm8k | math | arithmetic (default: the run's, else gsm8k)."
    ),
    seeds: int = typer.Option(16, min=1, help="Samples per problem averaged into Pass@1."),
    temperature: float = typer.Option(0.35, min=0.0, help="Sampling temperature."),
    max_tokens: int | None = typer.Option(None, min=1, help="Default: the run's eval max."),
    num_problems: int | None = typer.Option(None, min=1, help="First N problems (all = unset)."),
    seed: int = typer.Option(1234, min=0, help="Sampling seed."),
    out: Path | None = typer.Option(
        None, help="JSON results (default RUN/eval-SPLIT.json, else eval-SPLIT.json)."
    ),
    redis_url: str | None = _REDIS,
    reward_url: str | None = _REWARD,
    local_replicas: int = _REPLICAS,
    engine: EngineKind = _ENGINE,
    threads: int | None = _THREADS,
) -> None:
    """Pass@1 averaged over seeds, with its spread, through the rollout and reward services."""
    import asyncio

    if (checkpoint is None) == (run is None):
        raise typer.BadParameter("give exactly one of --checkpoint or --run")
    if select_on not in ("validation", "last"):
        raise typer.BadParameter(f"--select-on must be validation or last, not {select_on!r}")
    _start(threads)
    cfg, selection = None, None
    if run is not None:
        try:
            cfg = run_config(run)
            if select_on == "validation":
                selection = select_checkpoint(run)
                checkpoint = Path(selection["path"])
            else:
                checkpoint = run_policy(run)[0]
        except FileNotFoundError as e:
            raise typer.BadParameter(str(e)) from e
    assert checkpoint is not None
    if not (checkpoint / "config.json").is_file():
        raise typer.BadParameter(f"{checkpoint} is not a model directory (no config.json)")
    dataset = dataset or (cfg.dataset if cfg else "gsm8k")
    max_tokens = max_tokens or (cfg.eval.max_response_tokens if cfg else 1024)
    examples = _examples(dataset, split, num_problems, cfg.seed if cfg else 0, cfg)
    res = asyncio.run(
        eval_checkpoint(
            checkpoint,
            examples,
            seeds=seeds,
            temperature=temperature,
            max_tokens=max_tokens,
            seed=seed,
            shots=_shots(dataset, cfg),
            redis_url=redis_url,
            reward_url=reward_url,
            local_replicas=local_replicas,
            engine=engine,
        )
    )
    doc = {
        "checkpoint": str(checkpoint),
        "dataset": dataset,
        "split": split,
        "pass@1": res.mean,
        "stderr": res.stderr,
        "spread": res.spread,
        "per_seed": res.per_seed,
        "num_problems": res.num_problems,
        "seeds": seeds,
        "temperature": temperature,
        "max_tokens": max_tokens,
        "selection": selection,
        "engine": engine,
        "command": _eval_command(
            run,
            checkpoint,
            select_on,
            split,
            dataset,
            seeds,
            temperature,
            max_tokens,
            num_problems,
            seed,
            engine,
        ),
    }
    typer.echo(
        f"{split} Pass@1 {res.mean:.4f} ± {res.stderr:.4f} (standard error over "
        f"{res.num_problems} problems; std over {seeds} seeds {res.spread:.4f}) "
        f"of {checkpoint}"
    )
    _write_json(out or ((run or Path(".")) / f"eval-{split}.json"), doc)


def _eval_command(
    run: Path | None,
    checkpoint: Path,
    select_on: str,
    split: str,
    dataset: str,
    seeds: int,
    temperature: float,
    max_tokens: int,
    num_problems: int | None,
    seed: int,
    engine: str = "auto",
) -> str:
    """The `vineppo eval` command line that reproduces these numbers (all values resolved)."""
    argv = ["vineppo", "eval"]
    argv += (
        ["--run", str(run), "--select-on", select_on] if run else ["--checkpoint", str(checkpoint)]
    )
    argv += [
        "--split",
        split,
        "--dataset",
        dataset,
        "--seeds",
        str(seeds),
        "--temperature",
        str(temperature),
        "--max-tokens",
        str(max_tokens),
        "--seed",
        str(seed),
        "--engine",
        engine,
    ]
    argv += ["--num-problems", str(num_problems)] if num_problems else []
    return shlex.join(argv)


def analyze_values_cmd(
    run: Path | None = typer.Option(None, help="Run dir: its newest policy (+ PPO critic)."),
    checkpoint: Path | None = typer.Option(None, help="Or a model dir to analyse."),
    critic: Path | None = typer.Option(None, help="With --checkpoint: a Critic dir or critic.pt."),
    split: str = typer.Option("test", help="Held-out prompts: test | validation."),
    dataset: str | None = typer.Option(None, help="Default: the run's, else gsm8k."),
    num_prompts: int = typer.Option(8, min=1, help="Held-out prompts."),
    responses: int = typer.Option(4, min=2, help="Trajectories per prompt (the GRPO group)."),
    truth_k: int = typer.Option(256, min=1, max=256, help="MC samples of the ground truth."),
    k: int | None = typer.Option(None, min=1, max=256, help="VinePPO's K (default: the run's)."),
    temperature: float | None = typer.Option(None, min=0.0, help="Default: the run's (0.6)."),
    max_tokens: int | None = typer.Option(None, min=1, help="Default: the run's response max."),
    top_action_states: int = typer.Option(8, min=0, help="States for top-action identification."),
    candidates: int = typer.Option(5, min=2, help="Candidate next steps per state."),
    seed: int = typer.Option(0, min=0, help="Sampling seed."),
    out: Path | None = typer.Option(None, help="Output dir (default RUN/value-analysis)."),
    redis_url: str | None = _REDIS,
    reward_url: str | None = _REWARD,
    local_replicas: int = _REPLICAS,
    engine: EngineKind = _ENGINE,
    threads: int | None = _THREADS,
) -> None:
    """Value-prediction analysis: MAE, accuracy, explained variance, per-step error and
    top-action identification of VinePPO, the PPO critic and GRPO/RLOO baselines."""
    import asyncio

    from services.trainer.evaluation.value_probe import ProbeConfig

    if (checkpoint is None) == (run is None):
        raise typer.BadParameter("give exactly one of --run or --checkpoint")
    _start(threads)
    cfg, critic_file = None, critic
    try:
        if run is not None:
            cfg = run_config(run)
            checkpoint, critic_file = run_policy(run)
    except FileNotFoundError as e:
        raise typer.BadParameter(str(e)) from e
    assert checkpoint is not None
    dataset = dataset or (cfg.dataset if cfg else "gsm8k")
    if temperature is None:
        temperature = cfg.rollout.temperature if cfg else 0.6
    probe = ProbeConfig(
        responses=responses,
        truth_k=truth_k,
        vine_k=k or (cfg.vine.k if cfg else 9),
        temperature=temperature,
        max_tokens=max_tokens or (cfg.rollout.max_response_tokens if cfg else 1024),
        top_action_states=top_action_states,
        candidates=candidates,
        step_rules="math" if dataset == "math" else "gsm8k",
        seed=seed,
    )
    examples = _examples(dataset, split, num_prompts, cfg.seed if cfg else 0, cfg)
    model = load_critic(checkpoint, critic_file) if critic_file or critic else None
    out = out or ((run or Path(".")) / "value-analysis")
    doc = asyncio.run(
        analyze_checkpoint(
            checkpoint,
            examples,
            probe,
            out,
            critic=model,
            shots=_shots(dataset, cfg),
            redis_url=redis_url,
            reward_url=reward_url,
            local_replicas=local_replicas,
            engine=engine,
        )
    )
    for name, m in doc["metrics"].items():
        typer.echo(
            f"{name:>14}: MAE {m['mae']:.4f}  acc@0.05 {m['accuracy']:.3f}  "
            f"top-action {m.get('top_action')}"
        )
    typer.echo(f"wrote {out / 'analysis.json'}")


def sweep_cmd(
    k: str | None = typer.Option(None, help="VinePPO K values, e.g. 1,3,9."),
    temperature: str | None = typer.Option(None, help="Sampling temperatures, e.g. 0.6,0.8,1.0."),
    algo: str = typer.Option("vine", help="vine | ppo | grpo | rloo."),
    preset: str | None = typer.Option(None, help="Run preset (e.g. tiny-cpu)."),
    set_: list[str] = typer.Option([], "--set", help="Override for every run (repeatable)."),
    out: Path = typer.Option(Path("runs/sweep"), help="Runs go to OUT/<param>-<value>/."),
    dry_run: bool = typer.Option(False, help="Print the commands, run nothing."),
) -> None:
    """An ablation: one `vineppo train` per value (one after another), then one report."""
    import subprocess

    from services.trainer.evaluation.report import load_run, write_report

    if (k is None) == (temperature is None):
        raise typer.BadParameter("give exactly one of --k or --temperature")
    param, raw = ("k", k) if k is not None else ("temperature", temperature)
    values = [v.strip() for v in str(raw).split(",") if v.strip()]
    if not values:
        raise typer.BadParameter(f"--{param} needs comma-separated values")
    plan = sweep_plan(param, values, out, algo=algo, preset=preset, sets=list(set_))
    for name, argv in plan:
        typer.echo(f"{name}: {shlex.join(argv)}")
        if not dry_run and subprocess.run(argv, check=False).returncode != 0:
            raise typer.Exit(1)
    if not dry_run:
        runs = [load_run(out / name) for name, _ in plan]
        typer.echo(f"wrote {write_report(runs, out / 'report.html', title=f'sweep over {param}')}")
