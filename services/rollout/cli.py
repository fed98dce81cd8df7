"""`vineppo` subcommands that belong to the rollout service."""

from __future__ import annotations

import typer


def register(app: typer.Typer, serve: typer.Typer) -> None:
    """Add this service's commands to the top-level app and its `serve` sub-app."""
