"""The learning benchmark's figure: validation Pass@1 and train reward per iteration, each a
mean curve with its min–max band over seeds."""

from __future__ import annotations

from pathlib import Path


def plot(
    val: dict[str, dict[int, tuple[float, float, float]]],
    reward: dict[str, dict[int, tuple[float, float, float]]],
    out: Path,
    names: dict[str, str],
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), dpi=110)
    for ax, data, label in (
        (axes[0], val, "validation Pass@1 (T = 0.35)"),
        (axes[1], reward, "train reward (T of the rollouts)"),
    ):
        for algo, curve in data.items():
            its = sorted(curve)
            (line,) = ax.plot(its, [curve[i][0] for i in its], marker="o", ms=3, label=names[algo])
            ax.fill_between(
                its,
                [curve[i][1] for i in its],
                [curve[i][2] for i in its],
                color=line.get_color(),
                alpha=0.2,
            )
        ax.set_xlabel("RL iteration")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
