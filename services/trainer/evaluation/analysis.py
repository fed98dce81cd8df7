"""Value-prediction analysis (the paper's section 7): how well does each method's value
estimate match the "ground truth" V(s) = mean return of N (256) Monte Carlo continuations?

Pure metric math (tensors in, numbers out) and the plots in the style of the paper's
Figures 9-11. The sampling that produces the inputs lives in ``value_probe.py`` (this
package); ``vineppo analyze-values`` (``runs.analyze_checkpoint``) runs both and writes
``analysis.json`` + PNGs.

Methods compared on the same states:
- ``VinePPO``: the MC estimate with the run's K continuations;
- ``PPO critic``: the value network of a PPO run (when the run has one);
- ``GRPO/RLOO``: the mean reward of the *other* responses to the prompt (leave-one-out, so
  the prediction never contains the trajectory's own outcome), one shared baseline for every
  state of a response.
Predictions are scored as the method produces them: nothing is clamped to [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

TOLERANCE = 0.05
"""|V̂ − V| within this counts as accurate (paper: 0.05)."""
GROUP_BASELINE = "GRPO/RLOO"
"""Name of the leave-one-out group baseline in the analysis (`group_baseline`)."""
CURVE_TOLERANCES = [0.0, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5]
"""Tolerances of the accuracy curve (accuracy = share of states with |V̂ − V| ≤ tol)."""


def mean_abs_error(pred: Tensor, truth: Tensor) -> float:
    """pred, truth (N,) -> mean |pred − truth|."""
    return float((pred - truth).abs().mean())


def accuracy_within(pred: Tensor, truth: Tensor, tol: float = TOLERANCE) -> float:
    """pred, truth (N,) -> share of states with |pred − truth| ≤ tol (a 1e-9 slack for floats)."""
    return float(((pred - truth).abs() <= tol + 1e-9).float().mean())


def explained_variance(pred: Tensor, truth: Tensor) -> float:
    """1 − Var[truth − pred] / Var[truth] (population variances); NaN when truth is constant."""
    var_truth = float(truth.var(unbiased=False))
    if var_truth == 0.0:
        return math.nan
    return 1.0 - float((truth - pred).var(unbiased=False)) / var_truth


def mae_by_step(pred: Tensor, truth: Tensor, step: Tensor) -> dict[int, float]:
    """pred, truth (N,), step (N,) long -> {step index: MAE of the states at that step}."""
    out: dict[int, float] = {}
    for s in sorted(set(step.tolist())):
        sel = step == s
        out[int(s)] = mean_abs_error(pred[sel], truth[sel])
    return out


def accuracy_curve(
    pred: Tensor, truth: Tensor, tolerances: Sequence[float] = CURVE_TOLERANCES
) -> list[float]:
    """Accuracy within each tolerance (non-decreasing in the tolerance)."""
    return [accuracy_within(pred, truth, t) for t in tolerances]


def top_action_accuracy(pred: Tensor, truth: Tensor) -> float:
    """pred, truth (G, C): C candidate next steps of G states -> how often the method's
    top-ranked candidate is a truly best one.

    Ties are broken uniformly at random, so a row scores
    |argmax-set(pred) ∩ argmax-set(truth)| / |argmax-set(pred)| (its expected hit rate):
    a method that gives every candidate the same value scores chance, not 1. Rows whose
    candidates are all truly equal (e.g. every next step keeps V = 1) have no best action and
    are left out: any choice would count as a hit. NaN when no row is left.
    """
    if pred.shape != truth.shape or pred.dim() != 2 or pred.shape[1] < 1:
        raise ValueError(
            f"expected equal (G, C) shapes, got {tuple(pred.shape)}, {tuple(truth.shape)}"
        )
    informative = truth.max(dim=1).values - truth.min(dim=1).values > 1e-9  # (G,)
    pred, truth = pred[informative], truth[informative]
    if pred.shape[0] == 0:
        return math.nan
    pred_top = pred >= pred.max(dim=1, keepdim=True).values - 1e-9  # (G, C)
    true_top = truth >= truth.max(dim=1, keepdim=True).values - 1e-9  # (G, C)
    hits = (pred_top & true_top).sum(1).float() / pred_top.sum(1).float()  # (G,)
    return float(hits.mean())


def group_baseline(rewards: Tensor, groups: Tensor) -> Tensor:
    """rewards (B,), groups (B,) -> (B,) the group baseline of each response as a value
    predictor: the mean reward of the *other* responses of its group,
    V̂_b = (Σ_{j in g(b)} R_j − R_b) / (n_g − 1).

    A value predictor must not see the outcome it predicts: GRPO's group mean includes R_b
    (weight 1/n_g), which pulls it towards the trajectory's own 0/1 outcome and flatters its
    error. Left out, GRPO's and RLOO's baselines are the same number. A group of one response
    has no baseline: ValueError.
    """
    out = torch.empty_like(rewards, dtype=torch.float32)
    for g in sorted(set(groups.tolist())):
        sel = groups == g
        r = rewards[sel].float()
        n = r.numel()
        if n < 2:
            raise ValueError(f"group {g} has {n} response; a leave-one-out baseline needs >= 2")
        out[sel] = (r.sum() - r) / (n - 1)
    return out


def method_metrics(
    pred: Tensor, truth: Tensor, step: Tensor, top: tuple[Tensor, Tensor] | None = None
) -> dict[str, Any]:
    """Every number the report shows for one method (JSON-ready; NaN becomes None)."""
    row: dict[str, Any] = {
        "num_states": int(truth.numel()),
        "mae": mean_abs_error(pred, truth),
        "accuracy": accuracy_within(pred, truth),
        "explained_variance": explained_variance(pred, truth),
        "mae_by_step": {str(k): v for k, v in mae_by_step(pred, truth, step).items()},
        "accuracy_curve": accuracy_curve(pred, truth),
    }
    if top is not None:
        row["top_action"] = top_action_accuracy(*top)
        spread = top[1].max(dim=1).values - top[1].min(dim=1).values  # (G,) truth's range
        row["top_action_states"] = int((spread > 1e-9).sum())  # states with a best action
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}


def summarize(records: Mapping[str, Any]) -> dict[str, Any]:
    """``records`` (truth, step, preds{method: list}, top{truth, preds{method}}) -> metrics."""
    truth = torch.tensor(records["truth"], dtype=torch.float32)
    step = torch.tensor(records["step"], dtype=torch.long)
    top = records.get("top") or {}
    out: dict[str, Any] = {}
    for name, pred in records["preds"].items():
        pair = None
        if top.get("truth") and name in top.get("preds", {}):
            pair = (torch.tensor(top["preds"][name]), torch.tensor(top["truth"]))
        out[name] = method_metrics(torch.tensor(pred, dtype=torch.float32), truth, step, pair)
    return out


# -- plots (paper Figures 9-11) ------------------------------------------------------------
def plot_analysis(
    records: Mapping[str, Any], metrics: Mapping[str, Any], prefix: Path
) -> list[Path]:
    """Write ``<prefix>scatter.png``, ``<prefix>mae-by-step.png``, ``<prefix>accuracy.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    methods = list(records["preds"])
    # 1) predicted vs ground truth, one panel per method, two per row (Figure 9)
    cols = min(2, len(methods))
    rows = -(-len(methods) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.3 * rows), dpi=110, squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= len(methods):
            ax.set_visible(False)
            continue
        name = methods[i]
        ax.scatter(records["truth"], records["preds"][name], s=12, alpha=0.4)
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
        ax.set(
            xlim=(-0.05, 1.05),
            ylim=(-0.05, 1.05),
            xlabel="ground-truth V(s)",
            ylabel="predicted V̂(s)",
        )
        ax.set_title(f"{name} (MAE {metrics[name]['mae']:.3f})", fontsize="medium")
    paths = [_save(fig, plt, prefix.with_name(prefix.name + "scatter.png"))]
    # 2) MAE per reasoning-step index (Figure 10)
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=110)
    for name in methods:
        by = metrics[name]["mae_by_step"]
        xs = sorted(int(k) for k in by)
        ax.plot(xs, [by[str(x)] for x in xs], label=name, **_style(name, methods))
    ax.set(xlabel="reasoning step index", ylabel="mean absolute error")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    _finish(ax, "best")
    paths.append(_save(fig, plt, prefix.with_name(prefix.name + "mae-by-step.png")))
    # 3) accuracy vs tolerance (Figure 11)
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=110)
    for name in methods:
        ax.plot(
            CURVE_TOLERANCES, metrics[name]["accuracy_curve"], label=name, **_style(name, methods)
        )
    ax.axvline(TOLERANCE, color="grey", lw=0.8, ls="--")
    ax.set(xlabel="tolerance |V̂ − V|", ylabel="share of states within tolerance", ylim=(0, 1.02))
    _finish(ax, "lower right")
    paths.append(_save(fig, plt, prefix.with_name(prefix.name + "accuracy.png")))
    return paths


def _finish(ax: Any, loc: str) -> None:
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc=loc)


def _style(name: str, methods: list[str]) -> dict[str, Any]:
    """Distinct marker and dash per method, so methods with equal numbers stay visible."""
    i = methods.index(name)
    return {
        "marker": "osD^v"[i % 5],
        "ls": ["-", "--", "-.", ":"][i % 4],
        "alpha": 0.85,
        "markersize": 7 - i,
    }


def _save(fig: Any, plt: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
