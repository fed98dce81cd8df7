"""The ``vineppo`` command. Each service registers its own subcommands; heavy imports stay
inside the commands so ``vineppo --help`` is instant.

Errors a user can fix never end in a traceback: a missing or malformed config file, a bad
setting (``VINEPPO_*`` variable or config field) or an empty path is answered with ONE line,
``Error: <what>: <why>`` naming the field (and its environment variable), and exit status 2
(click's usage-error status). ``CliGroup`` (``services/cli_errors.py``), the group class of
every ``vineppo`` Typer, does the translation around each subcommand.
"""

from __future__ import annotations

import typer

from services.cli_errors import CliGroup
from services.demo import cli as demo_cli
from services.reward import cli as reward_cli
from services.rollout import cli as rollout_cli
from services.trainer import cli as trainer_cli

app = typer.Typer(
    cls=CliGroup,
    name="vineppo",
    help="RL finetuning for LLM math reasoning: VinePPO, PPO and baselines, as services.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
serve_app = typer.Typer(
    cls=CliGroup, help="Run a service (reward, rollout) with uvicorn.", no_args_is_help=True
)
app.add_typer(serve_app, name="serve")
tasks_app = typer.Typer(help="The built-in arithmetic task.", no_args_is_help=True)
app.add_typer(tasks_app, name="tasks")


@tasks_app.command("sample")
def tasks_sample(
    n: int = typer.Option(3, min=1, help="How many problems to print."),
    steps: int = typer.Option(4, min=2, max=8, help="Computation steps per problem."),
    seed: int = typer.Option(0, help="Same seed, same problems."),
    split: str = typer.Option("train", help="train | validation | test."),
) -> None:
    """Print generated problems with their step-by-step solutions."""
    from shared.tasks.arithmetic import ArithmeticConfig, generate

    cfg = ArithmeticConfig(min_steps=steps, max_steps=steps)
    try:
        problems = generate(cfg, split=split, n=n, seed=seed)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--split") from e
    for i, p in enumerate(problems):
        typer.echo(f"--- problem {i} ---\nQuestion: {p.question}\nAnswer:\n{p.solution}\n")


@app.command("steps")
def steps_cmd(
    dataset: str = typer.Option("gsm8k", help="gsm8k | math: segmentation rules to apply."),
    text: str | None = typer.Option(None, help="Text to segment (default: read stdin)."),
) -> None:
    """Split a response into reasoning steps and print each span."""
    import sys

    from shared.steps import split_steps

    body = text if text is not None else sys.stdin.read()
    try:
        spans = split_steps(body, dataset)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--dataset") from e
    for i, (start, end) in enumerate(spans):
        typer.echo(f"[{i}] {start}:{end} {body[start:end]!r}")


for _module in (reward_cli, rollout_cli, trainer_cli, demo_cli):
    _module.register(app, serve_app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
