"""PPO, GRPO, RLOO and VinePPO from the demo's SFT model, several seeds, each at its best.

    .venv/bin/python -m bench.learning --seeds 0,1,2  # docs/benchmarks/learning.md

Seeds may run as parallel processes (``--seeds 0`` & ``--seeds 1`` & ...): runs are kept in
``runs/learning/<band>/seed<s>/<algo>`` and reused, so ``--seeds 0,1,2`` afterwards only
reports. Every run is the demo's setting (`services.demo.run`): the same SFT model, episodes
per iteration and validation, each method's hyperparameters from its own sweep (`DEMO_RL`,
docs/benchmarks/learning_sweep.md), run for ``--iterations`` (long enough that validation stops
improving). Per method: test Pass@1 of the best-by-validation policy (500 problems × 4
samples; mean over seeds ± its standard error, and each seed ± its SE over problems), the
iteration and training seconds at which VinePPO first reaches the best baseline's peak, and
PPO's critic against MC truth at the first and last validation. Each seed's value analysis
(``runs/learning/<band>/seed<s>/ppo/value-analysis``) is reported by ``bench.findings values``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import statistics
import time
from pathlib import Path
from typing import Any

from bench.runs import (
    BASELINES,
    DOCS,
    NAMES,
    RUNS,
    best_point,
    first_reach,
    machine,
    mean_band,
    mean_se,
    run_one,
    write_doc,
)

ALGOS = ("ppo", "grpo", "rloo", "vine")


def run_seed(seed: int, args: argparse.Namespace, budget: Any, model: Path) -> dict[str, Any]:
    """Every method of one seed (each reused when finished) and the seed's value analysis."""
    out = args.out / f"seed{seed}"
    results = {
        a: run_one(a, seed, out, budget, model, band=args.band, test=True)
        for a in args.algos.split(",")
    }
    analysis = out / "ppo" / "value-analysis" / "analysis.json"
    if "ppo" in results and not analysis.is_file():
        from services.demo.run import run_config, value_mae

        value_mae(out, budget, run_config("ppo", model, out, budget, seed, band=args.band))
    metrics = json.loads(analysis.read_text())["metrics"] if analysis.is_file() else {}
    return {"results": results, "values": metrics}


def report(args: argparse.Namespace, budget: Any, seeds: dict[int, dict[str, Any]]) -> None:
    from bench.learning_plot import plot
    from services.demo.run import DEMO_RL

    algos = args.algos.split(",")
    runs = {a: [seeds[s]["results"][a] for s in seeds] for a in algos}
    val = {a: mean_band([r["curves"]["val"] for r in rs]) for a, rs in runs.items()}
    clock = {a: mean_band([r["curves"]["cpu"] for r in rs]) for a, rs in runs.items()}
    first = [seeds[s]["results"][algos[0]] for s in seeds]
    sft = [r["sft Pass@1"] for r in first]
    total = sum(r["curves"]["clock"][max(r["curves"]["clock"])] for rs in runs.values() for r in rs)
    lines = [
        f"# Learning benchmark: {', '.join(NAMES[a] for a in algos)} on the built-in task",
        "",
        f"Command: `.venv/bin/python -m bench.learning --seeds {args.seeds} --algos "
        f"{args.algos} --iterations {budget.iterations} --eval-every {budget.eval_every}`"
        + ("" if args.band == "2-4" else f" --band {args.band}"),
        "",
        f"{machine()}; RL training of all runs {total / 60:.0f} min (seeds ran as "
        "parallel processes).",
        f"Per run: {budget.iterations} iterations × {budget.prompts} prompts × "
        f"{budget.responses} responses (the same episodes for every method; PPO's value "
        f"warm-up adds its own), VinePPO K = {budget.k}; each method's hyperparameters from "
        "its own sweep ([learning_sweep.md](learning_sweep.md)): "
        f"`{json.dumps({a: DEMO_RL[a] for a in algos})}`. Validation Pass@1 on "
        f"{budget.val_problems} problems × {budget.val_seeds} samples every "
        f"{budget.eval_every} iterations; test Pass@1 of the policy selected on validation, "
        f"on {budget.test_problems} problems × {budget.test_seeds} samples; both at T = "
        "0.35. Over seeds: mean ± standard error (sd/√n); per seed: ± standard error over "
        "problems. Training CPU seconds: the trainer process's CPU time (its in-process "
        "rollout worker included, grading excluded), which other load on the shared 2-core "
        "machine hardly changes, unlike wall-clock; validation excluded, PPO's critic "
        "warm-up included.",
        "",
        "| method | test Pass@1 (mean ± SE over seeds) | per seed (± SE) | gain over SFT "
        "| best val Pass@1, mean curve (iteration) | training CPU s to it |",
        "|---|---:|---|---:|---:|---:|",
        f"| SFT | {_ms(sft)} | "
        + ", ".join(f"{r['sft Pass@1']:.3f} ± {r['sft SE']:.3f}" for r in first)
        + " | | | |",
    ]
    for a in algos:
        accs = [r["test Pass@1"] for r in runs[a]]
        gains = [acc - s for acc, s in zip(accs, sft, strict=True)]
        it, best = best_point({i: v[0] for i, v in val[a].items()})
        lines.append(
            f"| {NAMES[a]} | {_ms(accs)} | "
            + ", ".join(f"{r['test Pass@1']:.3f} ± {r['test SE']:.3f}" for r in runs[a])
            + f" | {_ms(gains, sign=True)} | {best:.3f} ({it}) | "
            f"{clock[a][it][0]:.0f} |"
        )
    if "vine" in algos and any(b in algos for b in BASELINES):
        lines += ["", reach(val, clock, [b for b in BASELINES if b in algos])]
    lines += [
        "",
        *critic_lines(runs),
        "",
        *profile(runs),
        "",
        "The value analysis of these runs (MC vs critic vs group mean against 64-sample "
        "truth, per step index, top-action accuracy) is finding (e) of "
        "[findings.md](findings.md) (`python -m bench.findings values`).",
    ]
    reward = {a: mean_band([r["curves"]["reward"] for r in rs]) for a, rs in runs.items()}
    suffix = "" if args.band == "2-4" else f"_{args.band}"
    png = DOCS / f"learning{suffix}.png"
    plot(val, reward, png, {a: NAMES[a] for a in algos})
    lines += [
        "",
        f"![validation Pass@1 and train reward per iteration, mean and min–max band "
        f"over seeds]({png.name})",
    ]
    write_doc(DOCS / f"learning{suffix}.md", lines)


def _ms(values: list[float], sign: bool = False) -> str:
    mean, se = mean_se(values)
    return f"{mean:+.3f} ± {se:.3f}" if sign else f"{mean:.3f} ± {se:.3f}"


def reach(val: dict[str, Any], clock: dict[str, Any], baselines: list[str]) -> str:
    """Iterations and training seconds VinePPO needs to reach the best baseline's peak."""
    peaks = {b: best_point({i: v[0] for i, v in val[b].items()}) for b in baselines}
    best = max(peaks, key=lambda b: peaks[b][1])
    it, peak = peaks[best]
    text = (
        f"The best baseline is {NAMES[best]}: its mean validation curve peaks at {peak:.3f} "
        f"at iteration {it} ({clock[best][it][0]:.0f} CPU s of training). "
    )
    hit = first_reach({i: v[0] for i, v in val["vine"].items()}, peak)
    if hit is None:
        return text + "VinePPO's mean curve never reaches it in this budget."
    return text + (
        f"VinePPO's mean curve first reaches it at iteration {hit} "
        f"({clock['vine'][hit][0]:.0f} CPU s): {hit / it:.2f}× the iterations, "
        f"{clock['vine'][hit][0] / max(clock[best][it][0], 1e-9):.2f}× the training "
        "CPU time."
    )


def critic_lines(runs: dict[str, list[dict[str, Any]]]) -> list[str]:
    """PPO's critic against MC truth at the first and last validation (mean over seeds)."""
    if "ppo" not in runs or not runs["ppo"][0]["curves"]["critic_mae"]:
        return []
    out = [
        "PPO's critic against 32-sample MC truth on step states of fresh responses to 8 "
        "validation prompts, at the first and the last validation (mean over seeds), next "
        "to the GRPO/RLOO group mean on the same states:",
        "",
        "| | critic MAE | critic explained variance | group-mean MAE |",
        "|---|---:|---:|---:|",
    ]
    for label, pick in (("first", min), ("last", max)):
        cells = []
        for key in ("critic_mae", "critic_ev", "group_mae"):
            vals = [r["curves"][key][pick(r["curves"][key])] for r in runs["ppo"]]
            cells.append(_ms(vals))
        out.append(f"| {label} validation | " + " | ".join(cells) + " |")
    return out


def profile(runs: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Where an iteration's seconds go, per method (mean over iterations and seeds)."""
    from services.trainer.evaluation.report import load_run

    keys = ("generate", "values", "train", "push", "iteration")
    out = [
        "Wall-clock seconds per iteration (mean over iterations and seeds; `values` = MC "
        "rollouts for VinePPO, the critic's forward for PPO; `iteration` includes grading). "
        "The runs shared the 2 cores with up to ten other runs, at loads that differed "
        "between methods, so compare methods by the CPU seconds above, not by these:",
        "",
        "| method | " + " | ".join(keys) + " | critic warm-up (once) |",
        "|---|" + "---:|" * (len(keys) + 1),
    ]
    for a, rs in runs.items():
        rows = [r for res in rs for r in load_run(Path(res["dir"])).rows]
        cells = [
            statistics.mean(float(r[f"time/{k}"]) for r in rows if f"time/{k}" in r) for k in keys
        ]
        warm = [float(r["time/critic_warmup"]) for r in rows if "time/critic_warmup" in r]
        out.append(
            f"| {NAMES[a]} | "
            + " | ".join(f"{c:.1f}" for c in cells)
            + f" | {statistics.mean(warm):.0f} |"
            if warm
            else f"| {NAMES[a]} | " + " | ".join(f"{c:.1f}" for c in cells) + " | |"
        )
    return out


def main() -> None:
    from bench.credit_by_length import band_model
    from services.demo.run import BUDGETS
    from services.trainer.sft.config import LENGTH_BANDS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--algos", default=",".join(ALGOS))
    ap.add_argument("--iterations", type=int, default=32)
    ap.add_argument("--eval-every", type=int, default=4)
    ap.add_argument("--band", default="2-4", choices=list(LENGTH_BANDS))
    args = ap.parse_args()
    args.out = RUNS / "learning" / args.band
    budget = dataclasses.replace(
        BUDGETS["full"], iterations=args.iterations, eval_every=args.eval_every
    )
    model = band_model(args.band)
    start = time.monotonic()
    seeds = {s: run_seed(s, args, budget, model) for s in map(int, args.seeds.split(","))}
    if len(seeds) > 1:
        report(args, budget, seeds)
    print(f"done in {(time.monotonic() - start) / 60:.1f} min")


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    main()
