"""``vineppo demo``: the options, then `run.run_demo`, then the summary table."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from shared.logs import setup_logging


def register(app: typer.Typer, serve: typer.Typer) -> None:
    """Add ``vineppo demo`` to the top-level app."""
    app.command("demo")(demo_cmd)


def demo_cmd(
    out: Path = typer.Option(Path("runs/demo"), help="Where the demo writes everything."),
    quick: bool = typer.Option(False, help="A tiny budget (seconds, for CI)."),
    retrain_sft: bool = typer.Option(False, help="Rebuild the SFT model even if one exists."),
    threads: int = typer.Option(
        1, min=1, help="torch CPU threads (1: tiny models gain nothing from more on 2 cores)."
    ),
    engine: str = typer.Option("auto", help="Rollout engine: auto | torch | vllm."),
) -> None:
    """The built-in demo: SFT a tiny model, PPO vs VinePPO through the services, report."""
    import torch
    from rich.console import Console
    from rich.table import Table

    from services.demo.run import run_demo

    setup_logging()
    if threads:
        torch.set_num_threads(threads)
    try:
        summary = run_demo(
            out,
            budget="quick" if quick else "full",
            retrain_sft=retrain_sft,
            redis_url=os.environ.get("REDIS_URL") or None,
            engine=engine,
        )
    except KeyboardInterrupt:
        typer.echo("\ninterrupted: services stopped; run again to continue (the SFT model is kept)")
        raise typer.Exit(130) from None
    table = Table(title="vineppo demo (built-in arithmetic task, test split)")
    for key in summary[0]:
        table.add_column(key)
    for row in summary:
        table.add_row(*(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row.values()))
    Console().print(table)
    (out / "summary.txt").write_text(
        "\n".join("  ".join(f"{k}={v}" for k, v in r.items()) for r in summary) + "\n"
    )
    typer.echo(f"report: {out / 'report.html'}")
