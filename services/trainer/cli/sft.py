"""``vineppo sft``: parse the options into an `SFTConfig` and call `run_sft`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer


def sft_cmd(
    preset: str | None = typer.Option(
        None, help="Starting point: tiny-cpu (built-in task, tiny model from scratch, ~14 CPU-min)."
    ),
    config: Path | None = typer.Option(None, help="YAML/JSON file with SFTConfig fields."),
    dataset: str | None = typer.Option(None, help="arithmetic | gsm8k | math."),
    model: str | None = typer.Option(None, help="Model dir to finetune (save_pretrained)."),
    from_scratch: bool | None = typer.Option(
        None, "--from-scratch/--no-from-scratch", help="Build a tiny Llama + tokenizer first."
    ),
    output_dir: str | None = typer.Option(None, help="Where best/ and metrics.jsonl go."),
    set_: list[str] = typer.Option(
        [], "--set", help="Override any SFTConfig field: --set lr=1e-3 (repeatable)."
    ),
    threads: int | None = typer.Option(None, min=1, help="torch CPU threads."),
    data_dir: Path | None = typer.Option(None, help="Folder with gsm8k/ and math/ jsonl files."),
) -> None:
    """Supervised finetuning on gold solutions; keeps the best checkpoint by validation
    accuracy (greedy decoding + grader)."""
    import torch

    from services.trainer.overrides import merge_dicts, parse_overrides
    from services.trainer.sft.config import SFT_PRESETS, SFTConfig
    from services.trainer.sft.train import run_sft

    if threads is not None:
        torch.set_num_threads(threads)
    data: dict[str, Any] = {}
    if preset is not None:
        if preset not in SFT_PRESETS:
            raise typer.BadParameter(f"unknown preset {preset!r}; known: {', '.join(SFT_PRESETS)}")
        data = dict(SFT_PRESETS[preset])
    if config is not None:
        import yaml

        data = merge_dicts(data, yaml.safe_load(config.read_text(encoding="utf-8")) or {})
    flags = {
        "dataset": dataset,
        "model": model,
        "from_scratch": from_scratch,
        "output_dir": output_dir,
    }
    data = merge_dicts(data, {k: v for k, v in flags.items() if v is not None})
    try:
        data = merge_dicts(data, parse_overrides(set_))
        cfg = SFTConfig.model_validate(data)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from e
    result = run_sft(cfg, data_dir=data_dir)
    typer.echo(
        f"best validation accuracy {result.best_accuracy:.3f} after {result.steps} steps; "
        f"checkpoint: {result.best_dir}"
    )
