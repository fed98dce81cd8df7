"""Every `vineppo ...` command line that compose, the chart and the Dockerfiles run is a real
command of the CLI (services/cli.py), with options it accepts."""

from __future__ import annotations

import json
from typing import Any

import typer

from tests.deploy.manifests import chart_containers, compose_containers, load_compose, vineppo_argv
from tests.deploy.test_dockerfiles import IMAGES, parse


def _command_lines(rendered: list[dict[str, Any]]) -> list[tuple[str, list[str]]]:
    out = [(c.where, list(c.argv)) for c in compose_containers(load_compose())]
    out += [(c.where, list(c.argv)) for c in chart_containers(rendered)]
    for image in IMAGES:
        instrs, _ = parse(image)
        cmd = next(i.args for i in reversed(instrs) if i.op == "CMD")
        out.append((f"Dockerfile.{image} CMD", json.loads(cmd)))
    out = [(where, list(vineppo_argv(tuple(argv)))) for where, argv in out]
    return [(where, argv) for where, argv in out if argv and argv[0] == "vineppo"]


def _resolve(argv: list[str]) -> tuple[Any, list[str], str]:
    """The click command an argv reaches and the words left for it."""
    from services.cli import app

    cmd: Any = typer.main.get_command(app)  # typer's own click; duck-typed below
    words, path = argv[1:], "vineppo"
    while hasattr(cmd, "commands") and words and not words[0].startswith("-"):
        sub = cmd.commands.get(words[0])
        if sub is None:
            return None, words, f"{path} has no subcommand {words[0]!r}"
        cmd, path, words = sub, f"{path} {words[0]}", words[1:]
    return cmd, words, path


def test_deployed_commands_exist_in_the_cli(rendered: list[dict[str, Any]]) -> None:
    lines = _command_lines(rendered)
    assert len(lines) >= 8
    problems = []
    for where, argv in lines:
        cmd, words, path = _resolve(argv)
        if cmd is None:
            problems.append(f"{where}: {' '.join(argv)}: {path}")
            continue
        options = {o for p in cmd.params for o in getattr(p, "opts", [])}
        unknown = [w for w in words if w.startswith("--") and w not in options]
        if unknown:
            problems.append(
                f"{where}: {path} has no option(s) {unknown} (it has {sorted(options)})"
            )
    assert not problems, "commands the deployment runs that the CLI lacks:\n" + "\n".join(problems)
