"""What the learning benchmarks share: one training run of the demo's setting (any method, any
band of reasoning lengths, any seed and overrides), its curves, and the docs they write.

A run lives in ``<out>/<algo>`` (metrics.jsonl, policies, best/, test.json); a run whose
metrics reach its last iteration is reused, not retrained, so a benchmark can be stopped and
started again and several can share runs.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import statistics
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "benchmarks"
RUNS = ROOT / "runs"
NAMES = {"ppo": "PPO", "grpo": "GRPO", "rloo": "RLOO", "vine": "VinePPO", "sft": "SFT"}
BASELINES = ("ppo", "grpo", "rloo")


def curves(rows: list[dict[str, Any]]) -> dict[str, dict[int, float]]:
    """Per iteration: validation Pass@1 (``val``) and its SE (``val_se``), train reward
    (``reward``), KL to π_ref (``kl``), cumulative training seconds (``clock``, wall-clock,
    and ``cpu``, the trainer process's CPU time, which the other load of a shared machine
    hardly changes; the critic's warm-up included, validation excluded) and, where probed,
    the critic's and the group mean's MAE / explained variance against MC truth
    (``critic_mae``, ``critic_ev``, ``group_mae``)."""
    keys = {
        "val": "acc/val",
        "val_se": "acc/val_se",
        "reward": "reward/mean",
        "kl": "kl/ref",
        "critic_mae": "value/critic_mae",
        "critic_ev": "value/critic_ev",
        "group_mae": "value/group_mae",
        "ev_returns": "critic/ev_returns",
    }
    out: dict[str, dict[int, float]] = {k: {} for k in keys}
    clock = sum(float(r.get("time/critic_warmup", 0.0)) for r in rows)
    cpu = sum(float(r.get("time/cpu_critic_warmup", 0.0)) for r in rows)
    out["clock"], out["cpu"] = {0: clock}, {0: cpu}
    for r in rows:
        it = int(r["iteration"])
        if it > 0:
            clock += float(r.get("time/iteration", 0.0))
            cpu += float(r.get("time/cpu_iteration", 0.0))
            out["clock"][it], out["cpu"][it] = clock, cpu
        for name, key in keys.items():
            if key in r and r[key] is not None:
                out[name][it] = float(r[key])
    return out


def complete(run_dir: Path, iterations: int) -> bool:
    """True when ``run_dir`` holds a finished run of ``iterations`` iterations."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return False
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return bool(rows) and rows[-1]["iteration"] == iterations and "acc/val" in rows[-1]


def run_one(
    algo: str,
    seed: int,
    out: Path,
    budget: Any,
    model: Path,
    *,
    rl: dict[str, Any] | None = None,
    band: str = "2-4",
    test: bool = False,
) -> dict[str, Any]:
    """Train (or reuse) one run in ``out/algo``; with ``test``, also the test Pass@1 of its
    best-by-validation policy and of the SFT model (both cached in ``out/algo/test.json``)."""
    import torch

    from services.demo.run import run_config, test_selected, train_and_test
    from services.trainer.evaluation.report import load_run

    torch.set_num_threads(1)  # runs share the machine as parallel processes (see `machine`)
    cfg = run_config(algo, model, out, budget, seed, rl, band)
    run_dir = out / algo
    if not complete(run_dir, budget.iterations):
        asyncio.run(train_and_test(cfg, budget, None, {}, test=False))
    res: dict[str, Any] = {"method": algo, "seed": seed, "dir": str(run_dir)}
    if test:
        cache = run_dir / "test.json"
        if not cache.is_file():
            cache.write_text(json.dumps(test_selected(cfg, budget)))
        res.update(json.loads(cache.read_text()))
    res["curves"] = curves(load_run(run_dir).rows)
    print(json.dumps({k: v for k, v in res.items() if k != "curves"}), flush=True)
    return res


def best_point(curve: dict[int, float]) -> tuple[int, float]:
    """(iteration, value) of a validation curve's maximum after iteration 0 (ties: earliest)."""
    it = max((i for i in curve if i > 0), key=lambda i: (curve[i], -i))
    return it, curve[it]


def first_reach(curve: dict[int, float], target: float) -> int | None:
    """The first iteration > 0 at which ``curve`` reaches ``target`` (None: never)."""
    return next((i for i in sorted(curve) if i > 0 and curve[i] >= target - 1e-9), None)


def mean_band(series: list[dict[int, float]]) -> dict[int, tuple[float, float, float]]:
    """iteration -> (mean, min, max) over the runs that all have that iteration."""
    its = sorted(set.intersection(*(set(s) for s in series)))
    return {
        i: (
            statistics.mean(s[i] for s in series),
            min(s[i] for s in series),
            max(s[i] for s in series),
        )
        for i in its
    }


def mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and its standard error over runs (0 for a single run)."""
    if len(values) < 2:
        return values[0], 0.0
    return statistics.mean(values), statistics.stdev(values) / len(values) ** 0.5


def machine(threads: str = "1 torch thread per run") -> str:
    return (
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, CPU only, {threads}, load "
        f"average {os.getloadavg()[0]:.1f} at the end"
    )


def write_doc(path: Path, lines: list[str]) -> None:
    text = "\n".join(lines) + "\n"
    print(text)
    path.write_text(text)
