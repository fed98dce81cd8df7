"""Static HTML report of one or more runs: accuracy vs iteration, vs wall-clock and vs KL,
a table of final numbers with the commands that produced them, and — for a run dir that has
them — its test evaluation (``eval-test.json`` from ``vineppo eval``) and its value-prediction
analysis (``value-analysis/analysis.json`` from ``vineppo analyze-values``, redrawn here).
matplotlib draws PNGs next to the page; the page references only files it wrote.

    vineppo report runs/demo/ppo runs/demo/vine --out runs/demo/report.html
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Run:
    name: str
    rows: list[dict[str, Any]]
    command: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    analysis: dict[str, Any] | None = None
    """``value-analysis/analysis.json`` of the run, when present."""
    evals: dict[str, dict[str, Any]] = field(default_factory=dict)
    """``eval-<split>.json`` documents of the run by split."""

    def series(self, key: str) -> tuple[list[float], list[float]]:
        """(iteration, value) for every row that has ``key``."""
        pts = [(r["iteration"], r[key]) for r in self.rows if key in r]
        return [p[0] for p in pts], [p[1] for p in pts]

    def wall_clock(self) -> dict[int, float]:
        """Cumulative seconds of training at the end of each iteration: every iteration's
        ``time/iteration`` plus, for PPO, the critic's warm-up before iteration 1 (the
        iteration-0 value); validation and probes are not the method's cost and not counted."""
        total = sum(float(r.get("time/critic_warmup", 0.0)) for r in self.rows)
        out = {0: total}
        for r in self.rows:
            if r["iteration"] > 0:
                total += float(r.get("time/iteration", 0.0))
                out[r["iteration"]] = total
        return out

    def kl_at(self) -> dict[int, float]:
        """KL to π_ref measured during each iteration's update (iteration 0 = 0)."""
        out = {0: 0.0}
        for r in self.rows:
            if r["iteration"] > 0:
                out[r["iteration"]] = float(r.get("kl/ref", 0.0))
        return out


def load_run(run_dir: Path, name: str | None = None) -> Run:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {run_dir} a run directory?")
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    cmd_file = Path(run_dir) / "command.txt"
    command = cmd_file.read_text().strip() if cmd_file.is_file() else ""
    analysis_file = Path(run_dir) / "value-analysis" / "analysis.json"
    analysis = json.loads(analysis_file.read_text()) if analysis_file.is_file() else None
    evals = {
        p.stem.removeprefix("eval-"): json.loads(p.read_text())
        for p in sorted(Path(run_dir).glob("eval-*.json"))
    }
    return Run(name or Path(run_dir).name, rows, command, analysis=analysis, evals=evals)


YLABELS = {"acc/val": "validation Pass@1 (±1 SE)", "reward/mean": "train reward",
           "value/critic_mae": "PPO critic MAE vs MC truth",
           "value/critic_ev": "PPO critic explained variance"}  # fmt: skip


def _plot(runs: Sequence[Run], x_of: str, out: Path, xlabel: str, key: str = "acc/val") -> Path:
    """``key`` per iteration, wall-clock or KL; validation Pass@1 with a ±1 SE band (the
    standard error over validation problems) when the run logged it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=110)
    for run in runs:
        its, acc = run.series(key)
        if x_of == "iteration":
            xs = [float(i) for i in its]
        else:
            table = run.wall_clock() if x_of == "wall" else run.kl_at()
            xs = [table.get(int(i), float("nan")) for i in its]
        (line,) = ax.plot(xs, acc, marker="o", ms=3, label=run.name)
        se_its, se = run.series(f"{key}_se")
        if key == "acc/val" and se_its == its:
            ax.fill_between(
                xs,
                [a - e for a, e in zip(acc, se, strict=True)],
                [a + e for a, e in zip(acc, se, strict=True)],
                color=line.get_color(),
                alpha=0.2,
            )
    if x_of == "iteration":
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(YLABELS.get(key, key))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def write_report(
    runs: Sequence[Run], out_html: Path, summary: Sequence[dict[str, Any]] = (), title: str = ""
) -> Path:
    """Write ``out_html`` and its PNGs (``<stem>-*.png`` beside it); return the page path."""
    out_html = Path(out_html)
    out_html.parent.mkdir(parents=True, exist_ok=True)
    stem = out_html.stem
    plots = [
        _plot(runs, "iteration", out_html.with_name(f"{stem}-acc-iter.png"), "RL iteration"),
        _plot(runs, "wall", out_html.with_name(f"{stem}-acc-wall.png"), "wall-clock (s)"),
        _plot(runs, "kl", out_html.with_name(f"{stem}-acc-kl.png"), "KL[π ‖ π_ref] (k3)"),
        _plot(
            runs,
            "iteration",
            out_html.with_name(f"{stem}-reward-iter.png"),
            "RL iteration",
            key="reward/mean",
        ),
    ]
    critics = [r for r in runs if r.series("value/critic_mae")[0]]
    for key in ("value/critic_mae", "value/critic_ev") if critics else ():
        name = key.split("/")[1].replace("_", "-")
        plots.append(
            _plot(
                critics,
                "iteration",
                out_html.with_name(f"{stem}-{name}.png"),
                "RL iteration",
                key=key,
            )
        )
    rows = list(summary) or [_final_numbers(r) for r in runs]
    keys = list(dict.fromkeys(k for row in rows for k in row))
    table = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(row.get(k, '')))}</td>" for k in keys) + "</tr>"
        for row in rows
    )
    commands = "".join(
        f"<li><b>{html.escape(r.name)}</b>: <code>{html.escape(c)}</code></li>"
        for r in runs
        for c in [r.command, *(e.get("command", "") for e in r.evals.values())]
        if c
    )
    images = "".join(f'<img src="{p.name}" alt="{p.stem}">' for p in plots)
    page = f"""<!doctype html><html><head><meta charset="utf-8">
<title>{html.escape(title or "vineppo report")}</title><style>
body{{font-family:system-ui,sans-serif;margin:2rem;max-width:72rem}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.3rem .6rem}}
img{{max-width:32rem;margin:.5rem;vertical-align:top}}</style></head><body>
<h1>{html.escape(title or "vineppo report")}</h1>
<h2>Final numbers</h2><table><tr>{"".join(f"<th>{html.escape(k)}</th>" for k in keys)}</tr>
{table}</table>
<h2>Accuracy and train reward</h2><div>{images}</div>
{value_analysis_section(runs, out_html)}
<h2>Commands</h2><ul>{commands or "<li>not recorded</li>"}</ul>
</body></html>
"""
    out_html.write_text(page, encoding="utf-8")
    return out_html


def _final_numbers(run: Run) -> dict[str, Any]:
    _, acc = run.series("acc/val")
    wall = run.wall_clock()
    return {
        "run": run.name,
        "iterations": max((r["iteration"] for r in run.rows), default=0),
        "first acc/val": acc[0] if acc else "",
        "best acc/val": max(acc) if acc else "",
        "final acc/val": acc[-1] if acc else "",
        "wall-clock (s)": wall[max(wall)],
        **{
            f"{split} Pass@1": f"{e['pass@1']:.4f} ± {e['spread']:.4f}"
            for split, e in run.evals.items()
        },
        **run.extra,
    }


VALUE_COLUMNS = {"mae": "MAE", "accuracy": "accuracy (±0.05)",
                 "explained_variance": "explained variance", "top_action": "top-action",
                 "num_states": "states"}  # fmt: skip


def value_analysis_section(runs: Sequence[Run], out_html: Path) -> str:
    """The value-prediction section: per run with an analysis, a metrics table per method and
    its three plots redrawn beside the page; empty when no run has one."""
    parts = [_value_block(i, run, out_html) for i, run in enumerate(runs) if run.analysis]
    if not parts:
        return ""
    note = (
        "<p>Ground truth V(s) = mean return of many Monte Carlo continuations of the same "
        "policy; accuracy = share of states with |V̂ − V| ≤ 0.05; top-action = how often "
        "the method ranks a truly best of the candidate next steps first (ties broken at "
        "random, so a shared baseline scores chance).</p>"
    )
    return "<h2>Value prediction</h2>" + note + "".join(parts)


def _value_block(i: int, run: Run, out_html: Path) -> str:
    from services.trainer.evaluation.analysis import plot_analysis

    assert run.analysis is not None
    metrics, records = run.analysis["metrics"], run.analysis["records"]
    head = "".join(f"<th>{h}</th>" for h in ["method", *VALUE_COLUMNS.values()])
    body = "".join(
        f"<tr><td>{html.escape(name)}</td>"
        + "".join(f"<td>{'n/a' if m.get(k) is None else _fmt(m[k])}</td>" for k in VALUE_COLUMNS)
        + "</tr>"
        for name, m in metrics.items()
    )
    plots = plot_analysis(records, metrics, out_html.with_name(f"{out_html.stem}-values-{i}-"))
    images = "".join(f'<img src="{p.name}" alt="{p.stem}">' for p in plots)
    cfg = records.get("config", {})
    n_top = len((records.get("top") or {}).get("states", []))
    about = (
        f"<p>Policy <code>{html.escape(str(run.analysis.get('policy', '')))}</code>; "
        f"ground truth from {cfg.get('truth_k', '?')} MC samples per state; "
        f"{cfg.get('responses', '?')} trajectories per prompt at temperature "
        f"{cfg.get('temperature', '?')}; top-action over {cfg.get('candidates', '?')} "
        f"candidate next steps at {n_top} states.</p>"
    )
    return (
        f"<h3>{html.escape(run.name)}</h3>{about}<table><tr>{head}</tr>{body}</table>"
        f"<div>{images}</div>"
    )


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
