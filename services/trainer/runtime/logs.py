"""Logging of a trainer process: one format, the chatty libraries (httpx, DeepSpeed) quieted."""

from __future__ import annotations

import logging


def setup_logging() -> None:
    """INFO lines ``HH:MM:SS logger: message``; httpx and DeepSpeed only from WARNING up."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")  # fmt: skip
    for noisy in ("httpx", "DeepSpeed", "deepspeed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
