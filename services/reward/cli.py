"""`vineppo` subcommands that belong to the reward service."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer


def register(app: typer.Typer, serve: typer.Typer) -> None:
    """Add this service's commands to the top-level app and its `serve` sub-app."""

    @serve.command("reward")
    def serve_reward(
        host: str | None = typer.Option(None, help="Interface (default VINEPPO_REWARD_HOST)."),
        port: int | None = typer.Option(None, help="Port (default VINEPPO_REWARD_PORT, 8001)."),
        workers: int | None = typer.Option(None, help="Grader processes (default 2)."),
    ) -> None:
        """Run the reward service (sandboxed grader) with uvicorn."""
        from services.reward.app import create_app
        from services.reward.settings import RewardSettings
        from shared.serve import run

        overrides: dict[str, Any] = {"host": host, "port": port, "workers": workers}
        settings = RewardSettings(**{k: v for k, v in overrides.items() if v is not None})
        run(create_app(settings), settings)

    @app.command("grade")
    def grade_cmd(
        input: Path = typer.Option(
            ...,
            "--input",
            "-i",
            exists=True,
            dir_okay=False,
            help='JSONL: {"dataset", "response", "gold"} per line.',
        ),
        output: Path | None = typer.Option(
            None, "--output", "-o", help="Verdict JSONL (default: stdout)."
        ),
        workers: int = typer.Option(2, min=1, help="Sandboxed grader processes."),
        timeout_s: float = typer.Option(2.0, min=0.01, help="Hard limit per item, seconds."),
    ) -> None:
        """Grade a JSONL file through the sandboxed pool; one verdict JSON line per input line."""
        import asyncio

        from services.reward.batchfile import grade_lines

        lines = input.read_text(encoding="utf-8", errors="surrogateescape").splitlines()
        out_lines = asyncio.run(grade_lines(lines, workers=workers, timeout_s=timeout_s))
        text = "".join(line + "\n" for line in out_lines)
        if output is None:
            typer.echo(text, nl=False)
        else:
            output.write_text(text, encoding="utf-8")
