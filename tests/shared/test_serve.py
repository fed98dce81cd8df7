"""`shared.serve.configure_logging`: a service's own INFO lines reach stderr at the level its
settings name (before, `vineppo serve` configured only uvicorn's loggers, so a rollout replica's
"loaded vN" lines never appeared in its container's log)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SNIPPET = """
import logging, sys
from shared.serve import configure_logging
configure_logging(sys.argv[1])
logging.getLogger("services.rollout.worker").info("replica r1 loaded v3")
logging.getLogger("services.rollout.worker").debug("a debug line")
logging.getLogger("services.rollout.worker").warning("a warning line")
"""


def log_lines(level: str) -> str:
    proc = subprocess.run([sys.executable, "-c", SNIPPET, level], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=True)  # fmt: skip
    return proc.stderr


@pytest.mark.parametrize(
    ("level", "shown", "hidden"),
    [
        ("info", ["INFO services.rollout.worker: replica r1 loaded v3", "a warning line"],
         ["a debug line"]),
        ("warning", ["a warning line"], ["loaded v3", "a debug line"]),
        ("trace", ["loaded v3", "a debug line", "a warning line"], []),
    ],
)  # fmt: skip
def test_service_lines_follow_the_level(level: str, shown: list[str], hidden: list[str]) -> None:
    err = log_lines(level)
    for line in shown:
        assert line in err, err
    for line in hidden:
        assert line not in err, err
