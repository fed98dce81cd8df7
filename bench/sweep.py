"""Hyperparameter sweeps of the RL methods on the demo's setting, chosen on validation only.

    .venv/bin/python -m bench.sweep --algos grpo --lrs 3e-5,1e-4,3e-4 --kls 1e-4,3e-3
    .venv/bin/python -m bench.sweep --algos ppo --lrs 1e-4 --kls 1e-4 \
        --vary ppo.critic_lr=1e-4,3e-4,1e-3 --set ppo.critic_warmup_iterations=8

Every point is one seed-0 run of ``--iterations`` iterations (the demo's per-iteration budget,
its SFT model or a band's) in ``runs/sweep/<band>/<point>/<algo>``, with the point's overrides
in ``point.json``; finished runs are reused. After its runs, an invocation rewrites
``docs/benchmarks/learning_sweep[_<band>].md`` from every finished point of the band, so
sweeps of different methods can run as parallel processes and the table lists every point
that was run, the ones that collapsed included. Each finished point's row (and each command)
is also kept in ``learning_sweep[_<band>].json`` next to the doc, so the table keeps points
whose run directories are gone (another machine, a cleaned ``runs/``).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import shlex
import statistics
import sys
from pathlib import Path
from typing import Any

from bench.runs import DOCS, NAMES, RUNS, best_point, curves, machine, run_one, write_doc


def points(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The grid: lr × kl × every ``--vary`` list, each point with the ``--set`` overrides."""
    axes: list[list[tuple[str, Any]]] = [
        [("optim.lr", float(x)) for x in args.lrs.split(",")],
        [("ppo.kl_coef", float(x)) for x in args.kls.split(",")],
    ]
    for spec in args.vary:
        key, _, values = spec.partition("=")
        axes.append([(key, _parse(v)) for v in values.split(",")])
    fixed = dict(_pair(s) for s in args.set)
    return [{**fixed, **dict(combo)} for combo in itertools.product(*axes)]


def _pair(spec: str) -> tuple[str, Any]:
    key, sep, value = spec.partition("=")
    if not sep:
        raise SystemExit(f"--set/--vary take key=value, got {spec!r}")
    return key, _parse(value)


def _parse(value: str) -> Any:
    import yaml

    return yaml.safe_load(value)


def point_name(point: dict[str, Any]) -> str:
    """A stable directory name for a point, e.g. ``lr1e-4_kl1e-4_ppo.critic_lr=3e-4``."""
    rest = [f"{k}={v}" for k, v in sorted(point.items()) if k not in ("optim.lr", "ppo.kl_coef")]
    return "_".join([f"lr{point['optim.lr']:g}", f"kl{point['ppo.kl_coef']:g}", *rest])


def table(root: Path, iterations: int, recorded: dict[str, Any]) -> list[str]:
    """One row per finished run under ``root`` (every point, every method), merged into the
    ``recorded`` rows (updated in place) of earlier invocations."""
    from bench.runs import complete
    from services.trainer.evaluation.report import load_run

    rows: dict[str, Any] = recorded.setdefault("rows", {})
    for point_dir in sorted(root.glob("*/point.json")):
        point_dir = point_dir.parent
        point = json.loads((point_dir / "point.json").read_text())
        for algo in NAMES:
            if not complete(point_dir / algo, iterations):
                continue
            c = curves(load_run(point_dir / algo).rows)
            best_it, best = best_point(c["val"])
            last = sorted(c["reward"])[-3:]
            extra = {k: v for k, v in point.items() if k not in ("optim.lr", "ppo.kl_coef")}
            critic = ""
            if c["critic_mae"]:
                end = max(c["critic_mae"])
                ev = c["critic_ev"].get(end, float("nan"))
                critic = f"{c['critic_mae'][end]:.3f} / {ev:.2f} / {c['group_mae'][end]:.3f}"
            auc = statistics.mean(v for i, v in c["val"].items() if i > 0)
            rows[f"{point_dir.name}/{algo}"] = (
                auc,
                f"| {NAMES[algo]} | {point['optim.lr']:g} | "
                f"{point['ppo.kl_coef']:g} | {_short(extra)} | **{auc:.3f}** | "
                f"{best:.3f} ± {c['val_se'].get(best_it, 0):.3f} ({best_it}) | "
                f"{c['val'][max(c['val'])]:.3f} | {c['reward'][min(c['reward'])]:.3f} → "
                f"{statistics.mean(c['reward'][i] for i in last):.3f} | "
                f"{c['kl'][max(c['kl'])]:.4f} | {critic} | "
                f"{c['clock'][max(c['clock'])]:.0f} |",
            )
    order = list(NAMES.values())
    ranked = sorted(rows.values(), key=lambda r: (order.index(r[1].split(" | ")[0][2:]), -r[0]))
    return [r[1] for r in ranked]


def _short(extra: dict[str, Any]) -> str:
    return ", ".join(f"{k.split('.')[-1]} {v}" for k, v in sorted(extra.items())) or "—"


def main() -> None:
    from services.demo.run import BUDGETS, DEMO_BAND
    from services.trainer.sft.config import LENGTH_BANDS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--algos", default="ppo,grpo,rloo,vine")
    ap.add_argument("--lrs", default="3e-5,1e-4,3e-4")
    ap.add_argument("--kls", default="1e-4,3e-3")
    ap.add_argument("--vary", action="append", default=[], help="key=v1,v2 (repeatable).")
    ap.add_argument("--set", action="append", default=[], help="key=value (repeatable).")
    ap.add_argument("--iterations", type=int, default=64)
    ap.add_argument("--eval-every", type=int, default=8)
    ap.add_argument("--band", default=DEMO_BAND, choices=list(LENGTH_BANDS))
    ap.add_argument("--report-only", action="store_true", help="Only rewrite the doc.")
    args = ap.parse_args()
    budget = dataclasses.replace(
        BUDGETS["full"], iterations=args.iterations, eval_every=args.eval_every
    )
    root = RUNS / "sweep" / args.band
    if not args.report_only:
        from bench.credit_by_length import band_model

        model = band_model(args.band)
        root.mkdir(parents=True, exist_ok=True)
        with (root / "commands.txt").open("a") as f:
            f.write(
                ".venv/bin/python -m bench.sweep " + " ".join(map(shlex.quote, sys.argv[1:])) + "\n"
            )
        for algo in args.algos.split(","):
            for point in points(args):
                out = root / point_name(point)
                out.mkdir(parents=True, exist_ok=True)
                (out / "point.json").write_text(json.dumps(point, sort_keys=True))
                run_one(algo, 0, out, budget, model, rl=point, band=args.band)
    suffix = "" if args.band == DEMO_BAND else f"_{args.band}"
    record_file = DOCS / f"learning_sweep{suffix}.json"
    recorded = json.loads(record_file.read_text()) if record_file.is_file() else {}
    rows = table(root, budget.iterations, recorded)
    commands = list(dict.fromkeys([*recorded.get("commands", []), *_commands(root)]))
    recorded["commands"] = commands
    record_file.write_text(json.dumps(recorded, indent=1) + "\n")
    lines = [
        f"# Sweeps on the built-in task, band {args.band} (seed 0, chosen on validation)",
        "",
        "Commands (each point is reused once finished; every invocation rewrites this "
        "file from every finished point):",
        "",
        *(f"    {c}" for c in commands),
        "",
        f"{machine()}. Each run: {budget.iterations} iterations × {budget.prompts} prompts "
        f"× {budget.responses} responses, the demo's SFT model for band {args.band}; "
        f"validation Pass@1 on {budget.val_problems} problems × {budget.val_seeds} samples "
        f"(T = 0.35) every {budget.eval_every} iterations, ± its standard error over "
        "problems. Sorted by method, then by the mean validation Pass@1 over the run's "
        "validations after iteration 0 (the area under the curve: it rewards reaching a "
        "level early as well as the level; on this task most settings peak within noise of "
        "each other). That mean chooses each method's setting. Critic columns (PPO): "
        "MAE / explained variance of the critic against 32-sample MC truth on step states "
        "of 8 validation prompts × 4 fresh responses at the last validation, and the "
        "GRPO/RLOO group mean's MAE on the same states. Train s: seconds of training "
        "(the critic's warm-up included, validation excluded).",
        "",
        "| method | lr | kl_coef | other | mean val Pass@1 | best val Pass@1 (iteration) "
        "| final val | train reward, first → last 3 | KL at the end | critic MAE / EV / "
        "group MAE | train s |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
    ]
    write_doc(DOCS / f"learning_sweep{suffix}.md", lines)


def _commands(root: Path) -> list[str]:
    """The commands that were run, as recorded by each run (``command.txt``)."""
    log = root / "commands.txt"
    return log.read_text().splitlines() if log.is_file() else []


if __name__ == "__main__":
    main()
