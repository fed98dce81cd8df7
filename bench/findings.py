"""The VinePPO paper's findings, one command each, on the built-in task (band 2-4).

    .venv/bin/python -m bench.findings k --seeds 0,1,2            # (b) K = 1, 3, 9
    .venv/bin/python -m bench.findings kl                         # (c) accuracy vs KL to π_ref
    .venv/bin/python -m bench.findings temperature --seeds 0,1,2  # (d) training at T = 1.0
    .venv/bin/python -m bench.findings values                     # (e) value error per step

(c) and (e) read the runs of ``bench.learning`` (run it first); (b) and (d) train their own
runs in ``runs/findings/`` (reused once finished). Each writes its section to
``runs/findings/<name>.md``; every invocation then rewrites docs/benchmarks/findings.md from
all sections present.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import statistics
from pathlib import Path
from typing import Any

from bench.runs import DOCS, NAMES, RUNS, best_point, machine, mean_se, run_one, write_doc

OUT = RUNS / "findings"
KS = (1, 3, 9)
KL_BUDGETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2)
"""KL[π ‖ π_ref] budgets (per token, k3) of finding (c)."""


def _budget(args: argparse.Namespace) -> Any:
    from services.demo.run import BUDGETS

    return dataclasses.replace(
        BUDGETS["full"], iterations=args.iterations, eval_every=args.eval_every, probe_prompts=0
    )


def _seeds(args: argparse.Namespace) -> list[int]:
    return [int(s) for s in args.seeds.split(",")]


def _cells(values: list[float]) -> str:
    mean, se = mean_se(values)
    return f"{mean:.3f} ± {se:.3f}"


# ----------------------------------------------------------------------------- (b) K
def finding_k(args: argparse.Namespace) -> list[str]:
    """VinePPO at K = 1, 3, 9: test Pass@1, validation, MC tokens; and the MC estimate's MAE
    at each K against 256-sample truth on the same states (the SFT policy's)."""
    from services.demo.run import committed_sft

    budget, model = _budget(args), committed_sft()
    runs = {
        k: [
            run_one(
                "vine",
                s,
                OUT / "k" / f"k{k}" / f"seed{s}",
                budget,
                model,
                rl={"vine.k": k},
                test=True,
            )
            for s in _seeds(args)
        ]
        for k in KS
    }
    maes: dict[int, list[float]] = {k: [] for k in KS}
    for s in _seeds(args):
        for k, mae in value_mae_by_k(model, s).items():
            maes[k].append(mae)
    lines = [
        "## (b) More MC samples: K = 1, 3, 9",
        "",
        f"Command: `.venv/bin/python -m bench.findings k --seeds {args.seeds} "
        f"--iterations {budget.iterations} --eval-every {budget.eval_every}`",
        "",
        "VinePPO with the demo's settings but K; test Pass@1 of the policy selected on "
        "validation (500 × 4); MC tokens per iteration; MAE of the K-sample estimate against "
        "256-sample truth on the step states of the SFT policy's responses (8 test prompts "
        "× 4 responses per seed). Mean ± SE over seeds.",
        "",
        "| K | test Pass@1 | best val Pass@1 | val at iteration 4 | MC tokens / iteration "
        "| training s | value MAE (vs 256-sample truth) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for k, rs in runs.items():
        tokens = [statistics.mean(_row_values(r, "value/mc_tokens")) for r in rs]
        clock = [r["curves"]["clock"][max(r["curves"]["clock"])] for r in rs]
        lines.append(
            f"| {k} | {_cells([r['test Pass@1'] for r in rs])} | "
            f"{_cells([best_point(r['curves']['val'])[1] for r in rs])} | "
            f"{_cells([r['curves']['val'].get(4, float('nan')) for r in rs])} | "
            f"{statistics.mean(tokens):,.0f} | {statistics.mean(clock):.0f} | "
            f"{_cells(maes[k])} |"
        )
    return lines


def _row_values(run: dict[str, Any], key: str) -> list[float]:
    from services.trainer.evaluation.report import load_run

    return [float(r[key]) for r in load_run(Path(run["dir"])).rows if key in r]


def value_mae_by_k(model: Path, seed: int) -> dict[int, float]:
    """MAE of the K-sample MC value for each K of `KS` against 256-sample truth, on the same
    states (truth and trajectories share their seeds across the K; cached per seed)."""
    from services.trainer.evaluation.runs import analyze_checkpoint
    from services.trainer.evaluation.value_probe import ProbeConfig
    from shared.datasets import load_examples

    cache = OUT / "k" / f"value-mae-seed{seed}.json"
    if cache.is_file():
        return {int(k): v for k, v in json.loads(cache.read_text()).items()}
    examples = load_examples(
        "arithmetic", "test", n=8, seed=seed + 1, arithmetic={"min_steps": 2, "max_steps": 4}
    )
    out: dict[int, float] = {}
    for k in KS:
        probe = ProbeConfig(
            responses=4,
            truth_k=256,
            vine_k=k,
            temperature=0.6,
            top_p=1.0,
            max_tokens=96,
            top_action_states=0,
            seed=seed,
        )
        doc = asyncio.run(
            analyze_checkpoint(model, examples, probe, OUT / "k" / f"analysis-k{k}-seed{seed}")
        )
        out[k] = doc["metrics"][f"VinePPO K={k}"]["mae"]
    cache.write_text(json.dumps(out))
    return out


# ----------------------------------------------------------------------------- (c) KL
def learning_runs(band: str = "2-4") -> dict[str, list[dict[str, Any]]]:
    """The finished runs of ``bench.learning`` by method (curves only)."""
    from bench.runs import curves
    from services.trainer.evaluation.report import load_run

    root = RUNS / "learning" / band
    out: dict[str, list[dict[str, Any]]] = {}
    for seed_dir in sorted(root.glob("seed*")):
        for algo in NAMES:
            if (seed_dir / algo / "metrics.jsonl").is_file():
                rows = load_run(seed_dir / algo).rows
                out.setdefault(algo, []).append({"curves": curves(rows), "dir": seed_dir / algo})
    if not out:
        raise SystemExit(f"no runs under {root}: run `python -m bench.learning` first")
    return out


def finding_kl(args: argparse.Namespace) -> list[str]:
    """Best validation Pass@1 a run reaches while its KL to π_ref is within a budget."""
    runs = learning_runs()
    lines = [
        "## (c) Accuracy against KL to π_ref",
        "",
        "Command: `.venv/bin/python -m bench.findings kl` (reads the runs of "
        "`bench.learning`, [learning.md](learning.md))",
        "",
        "Best validation Pass@1 among a run's validations whose KL[π ‖ π_ref] (k3, mean per "
        "token, measured in that iteration's update) is within the budget; mean ± SE over "
        "seeds (a run that never validated within a budget counts its SFT accuracy).",
        "",
        "| method | " + " | ".join(f"KL ≤ {b:g}" for b in KL_BUDGETS) + " | KL at the end |",
        "|---|" + "---:|" * (len(KL_BUDGETS) + 1),
    ]
    for algo, rs in runs.items():
        cells = []
        for b in KL_BUDGETS:
            vals = []
            for r in rs:
                c = r["curves"]
                ok = [c["val"][i] for i in c["val"] if c["kl"].get(i, 0.0) <= b]
                vals.append(max(ok))
            cells.append(_cells(vals))
        end = _cells([r["curves"]["kl"][max(r["curves"]["kl"])] for r in rs])
        lines.append(f"| {NAMES[algo]} | " + " | ".join(cells) + f" | {end} |")
    plot_kl(runs, DOCS / "findings_kl.png")
    return [*lines, "", "![validation Pass@1 against KL to π_ref](findings_kl.png)"]


def plot_kl(runs: dict[str, list[dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=110)
    for i, (algo, rs) in enumerate(runs.items()):
        for j, r in enumerate(rs):
            c = r["curves"]
            its = sorted(i for i in c["val"] if i in c["kl"])
            ax.plot(
                [c["kl"][i] for i in its],
                [c["val"][i] for i in its],
                marker="o",
                ms=3,
                color=f"C{i}",
                alpha=0.7,
                label=NAMES[algo] if j == 0 else None,
            )
    ax.set_xscale("symlog", linthresh=1e-3)
    ax.set(xlabel="KL[π ‖ π_ref] per token (k3)", ylabel="validation Pass@1")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ----------------------------------------------------------------------------- (d) T = 1
def finding_temperature(args: argparse.Namespace) -> list[str]:
    """Every method trained at sampling temperature 1.0 (the PPO ratio uses T = 1 too)."""
    from services.demo.run import committed_sft

    budget, model = _budget(args), committed_sft()
    algos = args.algos.split(",")
    runs = {
        a: [
            run_one(
                a,
                s,
                OUT / "temperature" / f"seed{s}",
                budget,
                model,
                rl={"rollout.temperature": 1.0},
                test=True,
            )
            for s in _seeds(args)
        ]
        for a in algos
    }
    lines = [
        "## (d) Training at temperature 1.0",
        "",
        f"Command: `.venv/bin/python -m bench.findings temperature --seeds {args.seeds} "
        f"--algos {args.algos} --iterations {budget.iterations} --eval-every "
        f"{budget.eval_every}`",
        "",
        "The demo's settings with `rollout.temperature=1.0` (samples, MC continuations and "
        "the PPO ratio); validation and test stay at T = 0.35. Drop after the peak = best "
        "validation Pass@1 − the lowest one after it. Mean ± SE over seeds.",
        "",
        "| method | test Pass@1 | best val Pass@1 | final val | drop after the peak | "
        "KL at the end | train reward, last 3 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for a, rs in runs.items():
        c = [r["curves"] for r in rs]
        drops = []
        for x in c:
            it, best = best_point(x["val"])
            drops.append(best - min(v for i, v in x["val"].items() if i >= it))
        last3 = [statistics.mean(x["reward"][i] for i in sorted(x["reward"])[-3:]) for x in c]
        lines.append(
            f"| {NAMES[a]} | {_cells([r['test Pass@1'] for r in rs])} | "
            f"{_cells([best_point(x['val'])[1] for x in c])} | "
            f"{_cells([x['val'][max(x['val'])] for x in c])} | {_cells(drops)} | "
            f"{_cells([x['kl'][max(x['kl'])] for x in c])} | "
            f"{_cells(last3)} |"
        )
    return lines


# ----------------------------------------------------------------------------- (e) values
def finding_values(args: argparse.Namespace) -> list[str]:
    """Value MAE per step index and top-action accuracy, from bench.learning's analyses."""
    docs = [
        json.loads(p.read_text())["metrics"]
        for p in sorted((RUNS / "learning" / "2-4").glob("seed*/ppo/value-analysis/analysis.json"))
    ]
    if not docs:
        raise SystemExit("no value analyses: run `python -m bench.learning` first")
    steps = sorted({int(k) for d in docs for m in d.values() for k in m["mae_by_step"]})
    lines = [
        "## (e) Value error per reasoning step and top-action identification",
        "",
        "Command: `.venv/bin/python -m bench.findings values` (reads the value analyses of "
        "`bench.learning`)",
        "",
        "States: the final PPO policy's responses to 8 test prompts × 4 per seed "
        f"({len(docs)} seeds); truth: 64-sample MC. Top-action: at 16 states, 5 sampled "
        "next steps scored by each estimator; the share of states where its top choice is "
        "truly the best (ties count fractionally; an estimator that scores all candidates "
        "alike gets the chance rate). Mean ± SE over seeds.",
        "",
        "| estimator | MAE | explained variance | top-action | "
        + " | ".join(f"MAE step {i}" for i in steps)
        + " |",
        "|---|---:|---:|---:|" + "---:|" * len(steps),
    ]
    for name in docs[0]:

        def cell(key: str, n: str = name) -> str:
            vals = [d[n][key] for d in docs if d.get(n, {}).get(key) is not None]
            return _cells(vals) if vals else "n/a"

        by = []
        for i in steps:
            vals = [
                d[name]["mae_by_step"][str(i)]
                for d in docs
                if str(i) in d.get(name, {}).get("mae_by_step", {})
            ]
            by.append(_cells(vals) if vals else "")
        lines.append(
            f"| {name} | {cell('mae')} | {cell('explained_variance')} | "
            f"{cell('top_action')} | " + " | ".join(by) + " |"
        )
    return lines


FINDINGS = {"k": finding_k, "kl": finding_kl, "temperature": finding_temperature,
            "values": finding_values}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("finding", choices=[*FINDINGS, "report"])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--algos", default="ppo,grpo,rloo,vine", help="(d) only.")
    ap.add_argument("--iterations", type=int, default=32)
    ap.add_argument("--eval-every", type=int, default=4)
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    if args.finding != "report":
        section = FINDINGS[args.finding](args)
        (OUT / f"{args.finding}.md").write_text("\n".join(section) + "\n")
    parts = [(OUT / f"{name}.md") for name in FINDINGS]
    lines = [
        "# The paper's findings on the built-in task",
        "",
        f"{machine()}. Band 2-4 (the demo's task and SFT model), each method with its "
        "swept settings (`DEMO_RL`). Sections missing below have not been run yet.",
        "",
    ]
    for part in parts:
        if part.is_file():
            lines += [part.read_text().rstrip(), ""]
    write_doc(DOCS / "findings.md", lines)


if __name__ == "__main__":
    main()
