"""One-line errors for the ``vineppo`` command: what a user can fix never ends in a traceback.

``CliGroup`` is the click group class of every ``vineppo`` Typer (``typer.Typer(cls=...)``).
Every subcommand (option parsing included) runs inside its ``invoke``; there a user error —
an option value the parser refused or a missing option (``Invalid value for '--k': ...``,
naming the option), a pydantic ``ValidationError`` (a ``VINEPPO_*`` variable or a config
field, also when a command wrapped it in ``typer.BadParameter``), a missing config file,
malformed YAML/JSON, or a ``UserError`` raised by a command or an option callback — is
printed as ONE line, ``Error: <field>: <why>``, on stderr, and the command exits with
status 2 (``typer.Exit``). Anything else propagates unchanged.
"""

from __future__ import annotations

import json
from typing import Any

import typer
from typer.core import TyperGroup

EXIT_USAGE = 2


class UserError(Exception):
    """A mistake the user can fix; ``CliGroup`` prints its message as one line, exit 2."""


def _env_prefix(model_name: str) -> str | None:
    """The env prefix of the pydantic-settings class called ``model_name``, if any."""
    from pydantic_settings import BaseSettings

    todo: list[type[Any]] = list(BaseSettings.__subclasses__())
    while todo:
        cls = todo.pop()
        if cls.__name__ == model_name:
            prefix = cls.model_config.get("env_prefix")
            return str(prefix) if prefix else None
        todo.extend(cls.__subclasses__())
    return None


def describe_validation(exc: Any) -> str:
    """A pydantic ``ValidationError`` on one line: each problem names its field (and, for a
    Settings class, its environment variable); input values are never echoed."""
    prefix = _env_prefix(exc.title)
    parts = []
    for err in exc.errors(include_input=False, include_url=False):
        loc = [str(p) for p in err.get("loc", ())]
        field = ".".join(loc) or "(whole model)"
        env = f"{prefix}{loc[0].upper()} ({exc.title}.{field})" if prefix and loc else None
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{env or f'{exc.title}.{field}'}: {msg}")
    return "; ".join(parts) or f"{exc.title}: invalid"


def user_message(exc: BaseException) -> str | None:
    """The one-line message for a user error, or None when ``exc`` is not one."""
    import yaml
    from pydantic import ValidationError

    cause = exc.__cause__ if isinstance(exc, typer.BadParameter) else exc
    if isinstance(exc, UserError):
        return str(exc)
    if isinstance(exc, typer.BadParameter) and (exc.param is not None or exc.param_hint):
        # an option the parser refused (Typer checks types and ranges with pydantic: its
        # message alone would name a "constrained-int", not the option), a missing one, or
        # a value a command refused naming the option: "Invalid value for '--k': ..."
        return exc.format_message()
    if isinstance(cause, ValidationError):
        return f"invalid setting: {describe_validation(cause)}"
    if isinstance(exc, FileNotFoundError | IsADirectoryError | PermissionError):
        return f"{exc.filename}: {exc.strerror or type(exc).__name__}"
    if isinstance(cause, yaml.YAMLError):
        mark = getattr(cause, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = getattr(cause, "problem", None) or type(cause).__name__
        return f"malformed YAML config{where}: {what}"
    if isinstance(cause, json.JSONDecodeError):
        return f"malformed JSON config at line {cause.lineno}: {cause.msg}"
    return None


class CliGroup(TyperGroup):
    """Runs every subcommand; user errors become one line on stderr and exit status 2."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort):
            raise
        except Exception as exc:
            msg = user_message(exc)
            if msg is None:
                raise
            typer.echo(f"Error: {' '.join(msg.split())}", err=True)
            raise typer.Exit(EXIT_USAGE) from None
