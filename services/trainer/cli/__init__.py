"""The trainer's ``vineppo`` subcommands: thin modules that parse options and call the rooms
below (``sft``, ``rl``, ``baselines``, ``evaluation``, ``runtime``).

- `train`: ``vineppo train`` (RL loop or baseline) and ``vineppo report``;
- `sft`: ``vineppo sft``;
- `eval`: ``vineppo eval``, ``vineppo analyze-values``, ``vineppo sweep``;
- `models`: ``vineppo models import-gguf``, ``vineppo models smollm2-path``.

Heavy imports stay inside the commands so ``vineppo --help`` is instant.
"""

from __future__ import annotations

import typer


def register(app: typer.Typer, serve: typer.Typer) -> None:
    """Add this service's commands to the top-level app and its `serve` sub-app."""
    from services.trainer.cli.eval import register_eval
    from services.trainer.cli.models import register_models
    from services.trainer.cli.sft import sft_cmd
    from services.trainer.cli.train import register_rl

    app.command("sft")(sft_cmd)
    register_rl(app)
    register_models(app)
    register_eval(app)
