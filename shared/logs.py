"""Logging of every ``vineppo`` process (services, trainer, eval, demo): one format, a level,
the chatty libraries quieted.

    setup_logging("info")    # 2025-01-31 12:00:00,123 INFO services.rollout.worker: ...

uvicorn configures its own loggers (``shared.serve.run`` passes it the same level).
"""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
NOISY = ("httpx", "httpcore", "DeepSpeed", "deepspeed")
"""Libraries that log every request or engine step at INFO: only WARNING and up from them."""


def level_number(level: str | int) -> int:
    """``info``, ``WARNING``, 20 ... as a ``logging`` level; uvicorn's ``trace`` is DEBUG, a
    name ``logging`` does not know is INFO."""
    if isinstance(level, int):
        return level
    levels = logging.getLevelNamesMapping() | {"TRACE": logging.DEBUG}
    return levels.get(level.strip().upper(), logging.INFO)


def setup_logging(level: str | int = "info") -> None:
    """Lines ``time LEVEL logger: message`` on stderr from ``level`` up (a second call only
    changes the level); httpx, httpcore and DeepSpeed only from WARNING up."""
    number = level_number(level)
    logging.basicConfig(level=number, format=FORMAT)
    logging.getLogger().setLevel(number)
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(max(logging.WARNING, number))
