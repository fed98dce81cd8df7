"""`vineppo` subcommands that belong to the rollout service.

vineppo serve rollout --model DIR [--engine torch|vllm] [--device cpu] [--port 8002]
vineppo value --url http://127.0.0.1:8002 --model DIR --question "..." --partial "..." --gold 7
vineppo value --url http://127.0.0.1:8002 --prompt $'Question: ...\\nAnswer:\\n' --gold 7

``register`` adds the module-level commands below to the ``vineppo`` app.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from services.rollout.settings import RolloutSettings


def model_path(value: str, option: str = "--model") -> Path:
    """The model directory ``value`` names: not empty (``""`` would mean the current
    directory), existing, a directory. Otherwise a one-line ``UserError`` naming the option."""
    from services.cli_errors import UserError

    if not value.strip():
        raise UserError(f"{option}: empty model path (give the model directory)")
    path = Path(value).expanduser()
    if not path.is_dir():
        what = "does not exist" if not path.exists() else "is not a directory"
        raise UserError(f"{option}: {value!r} {what}")
    return path


def _run_worker_only(settings: RolloutSettings) -> None:
    """``--worker-only``: one queue replica (``replica.run_replica``), no HTTP API."""
    import asyncio

    from services.cli_errors import UserError
    from services.rollout.engine.base import EngineDead
    from services.rollout.replica import BootFailed, run_replica
    from shared.logs import setup_logging

    if not settings.redis_url:
        raise UserError("--worker-only needs --redis-url (or VINEPPO_ROLLOUT_REDIS_URL)")
    setup_logging(settings.log_level)
    try:
        asyncio.run(run_replica(settings))
    except BootFailed as exc:
        raise UserError(f"--model {settings.model_dir}: could not load it: {exc}") from None
    except EngineDead as exc:  # not the user's fault: exit 1
        raise SystemExit(f"vineppo serve rollout: {exc}; restart it") from None


def register(app: typer.Typer, serve: typer.Typer) -> None:
    """Add this service's commands to the top-level app and its `serve` sub-app."""
    serve.command("rollout")(serve_rollout)
    app.command("value")(value_cmd)


def serve_rollout(
    model: str = typer.Option(..., "--model", help="Local model directory (transformers format)."),
    engine: str | None = typer.Option(
        None, help="auto | torch | vllm (default auto: by model size, docs/rollout.md)."
    ),
    device: str | None = typer.Option(None, help="torch engine device: cpu, cuda."),
    dtype: str | None = typer.Option(None, help="float32 | bfloat16 | float16."),
    host: str | None = typer.Option(None, help="Interface (default VINEPPO_ROLLOUT_HOST)."),
    port: int | None = typer.Option(None, help="Port (default VINEPPO_ROLLOUT_PORT, 8002)."),
    reward_url: str | None = typer.Option(None, help="Reward service base URL."),
    worker_only: bool = typer.Option(
        False, "--worker-only", help="Run only the queue worker (no HTTP API)."
    ),
    redis_url: str | None = typer.Option(None, help="Queue (VINEPPO_ROLLOUT_REDIS_URL)."),
) -> None:
    """Run the rollout service (generate, MC value, weight push) with uvicorn; with
    --worker-only, only a queue replica. Both take every other setting from the
    VINEPPO_ROLLOUT_* variables (docs/rollout.md, docs/queue.md)."""
    from services.rollout.settings import RolloutSettings

    overrides: dict[str, Any] = {
        "model_dir": model_path(model),
        "engine": engine,
        "device": device,
        "dtype": dtype,
        "host": host,
        "port": port,
        "reward_url": reward_url,
        "redis_url": redis_url,
    }
    settings = RolloutSettings(**{k: v for k, v in overrides.items() if v is not None})
    if worker_only:
        _run_worker_only(settings)
    else:
        _run_http(settings)


def _run_http(settings: RolloutSettings) -> None:
    """The HTTP API (with a queue worker when a Redis URL is set) until uvicorn stops."""
    from services.cli_errors import UserError
    from services.rollout.app import create_app
    from shared.serve import run

    if settings.redis_url:  # a refused password is one line now, not an unready pod later
        from shared.queue.redis_auth import check_credentials

        check_credentials(settings.redis_url)
    api = create_app(settings, stop_on_boot_failure=True)
    run(api, settings)
    if getattr(api.state, "engine_dead", False):  # not the user's fault: exit 1
        raise SystemExit(f"vineppo serve rollout: {api.state.boot_error}; restart it")
    if getattr(api.state, "boot_state", None) == "failed":
        raise UserError(f"--model {settings.model_dir}: could not load it: {api.state.boot_error}")


def value_cmd(
    question: str | None = typer.Option(
        None, help="The problem, formatted as the trainer formats it (needs --model)."
    ),
    model: str | None = typer.Option(
        None,
        "--model",
        help="The served model's directory: its tokenizer picks the prompt "
        "format of --question (its chat template, else 'Question: ...\\nAnswer:\\n').",
    ),
    prompt: str | None = typer.Option(
        None, help="Instead of --question: an already formatted prompt, sent as it is."
    ),
    gold: str = typer.Option(..., help="Gold final answer."),
    partial: str = typer.Option("", help="Partial solution so far (state s)."),
    k: int = typer.Option(16, min=1, max=256, help="Monte Carlo continuations."),
    dataset: str = typer.Option("gsm8k", help="gsm8k | math."),
    temperature: float = typer.Option(0.6, min=0.0, help="Sampling temperature."),
    max_tokens: int = typer.Option(1024, min=1, help="Tokens per continuation."),
    seed: int | None = typer.Option(None, help="Seed for reproducible samples."),
    url: str = typer.Option("http://127.0.0.1:8002", help="Rollout service base URL."),
    timeout_s: float = typer.Option(600.0, help="HTTP timeout."),
) -> None:
    """Ask the rollout service for V(s) of one partial solution; prints the JSON result."""
    import json

    import httpx

    text = value_prompt(question, model, prompt, dataset)
    body = {
        "items": [{"prompt": text, "partial_response": partial, "gold": gold, "dataset": dataset}],
        "k": k,
        "sampling": {"temperature": temperature, "max_tokens": max_tokens, "seed": seed},
    }
    try:
        resp = httpx.post(f"{url.rstrip('/')}/v1/value", json=body, timeout=timeout_s)
    except httpx.HTTPError as exc:
        typer.echo(f"error: cannot reach {url}: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(json.dumps(resp.json(), indent=2))
    if resp.status_code >= 400:
        raise typer.Exit(1)


def value_prompt(question: str | None, model: str | None, prompt: str | None, dataset: str) -> str:
    """The prompt `vineppo value` sends: ``prompt`` as it is, or ``question`` formatted by
    ``shared.prompts`` with the tokenizer of ``model`` — the chat template when it has one,
    else the plain format — exactly as the trainer formats its questions."""
    from services.cli_errors import UserError

    if (question is None) == (prompt is None):
        raise UserError(
            "give exactly one of --question (formatted for --model) or --prompt "
            "(already formatted, sent as it is)"
        )
    if question is None:
        return str(prompt)
    if model is None:
        raise UserError(
            "--question needs --model DIR (the served model's directory): its "
            "tokenizer decides the prompt format"
        )
    from transformers import AutoTokenizer

    from shared.prompts import format_prompt, style_for

    model_dir = model_path(model)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    except (OSError, ValueError) as exc:
        raise UserError(f"--model {model}: could not load its tokenizer: {exc}") from None
    try:
        return format_prompt(
            question, style=style_for(tokenizer), dataset=dataset, tokenizer=tokenizer
        )
    except ValueError as exc:
        raise UserError(f"--dataset: {exc}") from None
