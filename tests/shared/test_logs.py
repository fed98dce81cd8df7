"""`shared.logs.setup_logging`, the one logging set-up of every entry point: a service's own
INFO lines reach stderr at the level its settings name (before, `vineppo serve` configured
only uvicorn's loggers, so a rollout replica's "loaded vN" lines never appeared in its
container's log), in one format, with httpx and DeepSpeed quieted; the trainer, eval and demo
commands use the same function (before, they had their own format without the level)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SNIPPET = """
import logging, sys
from shared.logs import setup_logging
setup_logging(sys.argv[1])
logging.getLogger("services.rollout.worker").info("replica r1 loaded v3")
logging.getLogger("services.rollout.worker").debug("a debug line")
logging.getLogger("services.rollout.worker").warning("a warning line")
logging.getLogger("httpx").info("HTTP Request: POST /v1/grade")
logging.getLogger("deepspeed").info("a DeepSpeed step")
logging.getLogger("httpx").warning("an httpx warning")
if len(sys.argv) > 2:  # a second call changes the level
    setup_logging(sys.argv[2])
    logging.getLogger("services.trainer").debug("debug after the second call")
"""


def log_lines(*levels: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", SNIPPET, *levels],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return proc.stderr


@pytest.mark.parametrize(
    ("level", "shown", "hidden"),
    [
        ("info", ["INFO services.rollout.worker: replica r1 loaded v3", "a warning line",
                  "WARNING httpx: an httpx warning"],
         ["a debug line", "POST /v1/grade", "DeepSpeed step"]),
        ("warning", ["a warning line"], ["loaded v3", "a debug line", "POST /v1/grade"]),
        ("trace", ["loaded v3", "a debug line", "a warning line"], ["POST /v1/grade"]),
    ],
)  # fmt: skip
def test_service_lines_follow_the_level(level: str, shown: list[str], hidden: list[str]) -> None:
    err = log_lines(level)
    for line in shown:
        assert line in err, err
    for line in hidden:
        assert line not in err, err


def test_a_second_call_changes_the_level() -> None:
    err = log_lines("info", "debug")
    assert "a debug line" not in err and "DEBUG services.trainer: debug after" in err, err


def test_every_entry_point_uses_the_one_set_up() -> None:
    """No module but shared/logs.py calls ``logging.basicConfig``; the commands that log
    (train, eval, demo, serve, the worker-only replica) call ``setup_logging``."""
    callers = set()
    for path in [*ROOT.glob("services/**/*.py"), *ROOT.glob("shared/**/*.py")]:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "basicConfig":
                assert path == ROOT / "shared/logs.py", path
            if isinstance(node, ast.Name) and node.id == "setup_logging":
                callers.add(path.relative_to(ROOT).as_posix())
    assert {
        "services/trainer/cli/train.py",
        "services/trainer/cli/eval.py",
        "services/demo/cli.py",
        "services/rollout/cli.py",
        "shared/serve.py",
    } <= callers
