"""`vineppo train` and `vineppo report` (registered by ``cli/__init__``)."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from shared.logs import setup_logging

if TYPE_CHECKING:
    from services.trainer.client.wiring import Wiring


def register_rl(app: typer.Typer) -> None:
    app.command("train")(train_cmd)
    app.command("report")(report_cmd)


def train_cmd(
    algo: str = typer.Option("vine", help="vine | ppo | grpo | rloo | restem | dpo_positive."),
    config: Path | None = typer.Option(None, help="YAML/JSON run config (RunConfig fields)."),
    preset: str | None = typer.Option(None, help="paper | tiny-cpu (applied before --config)."),
    set_: list[str] = typer.Option([], "--set", help="Override a field: --set ppo.epochs=4."),
    output_dir: str | None = typer.Option(None, help="Run directory (metrics, checkpoints)."),
    resume: bool = typer.Option(False, help="Continue from the last complete checkpoint."),
    redis_url: str | None = typer.Option(
        None, help="Redis queue [env VINEPPO_TRAINER_REDIS_URL]; unset = in-process."
    ),
    reward_url: str | None = typer.Option(
        None, help="Reward service [env VINEPPO_TRAINER_REWARD_URL]; unset = start one."
    ),
    checkpoint_root: Path | None = typer.Option(
        None,
        help="Where policy-vN/ go for the replicas [env VINEPPO_TRAINER_CHECKPOINT_ROOT]; "
        "unset = <output_dir>/policies.",
    ),
    local_replicas: int | None = typer.Option(
        None, min=0, help="Rollout workers in this process [env VINEPPO_TRAINER_LOCAL_REPLICAS, 1]."
    ),
    engine: str | None = typer.Option(
        None, help="Local replicas' engine: auto | torch | vllm [env VINEPPO_TRAINER_ENGINE, auto]."
    ),
    threads: int | None = typer.Option(None, min=1, help="torch CPU threads."),
) -> None:
    """Run RL finetuning (VinePPO, PPO, GRPO, RLOO) through the rollout and reward services.

    Deployment settings come from ``VINEPPO_TRAINER_*`` (services/trainer/settings.py; the
    options above win): Redis URL and password, reward URL and token, the rollout URL and API
    token checked before the model loads, the checkpoint root the replicas read.
    """
    import asyncio

    import torch

    from services.trainer.client.local_services import run_services
    from services.trainer.client.wiring import RolloutUnavailable, check_rollout
    from services.trainer.config import load_config
    from services.trainer.rl.loop import RLTrainer
    from services.trainer.runtime.model import precision

    setup_logging()
    if threads:
        torch.set_num_threads(threads)
    overrides = [f"algo={algo}", *set_] + ([f"output_dir={output_dir}"] if output_dir else [])
    world = int(os.environ.get("WORLD_SIZE", "1"))  # a launcher's ranks: checked with the config
    if world > 1:
        overrides.append(f"dist.world_size={world}")
    try:
        cfg = load_config(config, overrides, preset=preset)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from e
    out = Path(cfg.output_dir)
    wiring = _train_wiring(out, redis_url, reward_url, checkpoint_root, local_replicas, engine)
    setup_logging(wiring.log_level)  # VINEPPO_TRAINER_LOG_LEVEL (the first call: INFO)
    try:
        check_rollout(wiring)
    except RolloutUnavailable as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    out.mkdir(parents=True, exist_ok=True)
    (out / "command.txt").write_text(shlex.join(["vineppo", *sys.argv[1:]]) + "\n")
    (out / "config.json").write_text(cfg.model_dump_json(indent=2))

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    async def main() -> None:
        services = run_services(
            cfg.model.policy,
            wiring.policy_root,
            redis_url=wiring.redis_url,
            reward_url=wiring.reward_url,
            reward_token=wiring.reward_token,
            local_replicas=wiring.local_replicas,
            engine=wiring.engine,
            dtype=precision(cfg.model.dtype, device).compute,  # replicas sample as it trains
        )
        async with services as svc:
            if cfg.algo in ("restem", "dpo_positive"):  # the RL-free baselines (issue 7)
                from services.trainer.baselines import run_baseline

                await run_baseline(cfg, svc, resume=resume)
                return
            await RLTrainer(cfg, svc).run(resume=resume)

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        typer.echo("\ninterrupted: the last complete iteration is checkpointed; --resume continues")
        raise typer.Exit(130) from None
    typer.echo(f"done: metrics in {out / 'metrics.jsonl'}")


def _train_wiring(
    out: Path,
    redis_url: str | None,
    reward_url: str | None,
    checkpoint_root: Path | None,
    local_replicas: int | None,
    engine: str | None = None,
) -> Wiring:
    """`TrainerSettings()` (``VINEPPO_TRAINER_*``) merged with the options; one-line errors."""
    from pydantic import ValidationError

    from services.trainer.client.wiring import resolve_wiring
    from services.trainer.settings import TrainerSettings

    try:
        settings = TrainerSettings()
        return resolve_wiring(
            settings,
            out,
            redis_url=redis_url,
            reward_url=reward_url,
            checkpoint_root=checkpoint_root,
            local_replicas=local_replicas,
            engine=engine,
        )
    except (ValidationError, ValueError) as e:
        raise typer.BadParameter(str(e)) from e


def report_cmd(
    runs: list[Path] = typer.Argument(..., help="Run directories (each has metrics.jsonl)."),
    out: Path = typer.Option(Path("report.html"), help="The HTML page to write."),
) -> None:
    """One static HTML page (PNG plots beside it) comparing the given runs."""
    from services.trainer.evaluation.report import load_run, write_report

    try:
        loaded = [load_run(r) for r in runs]
    except FileNotFoundError as e:
        raise typer.BadParameter(str(e)) from e
    typer.echo(f"wrote {write_report(loaded, out)}")
