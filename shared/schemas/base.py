"""The base of every HTTP body and queue message: a schema version and strict fields."""

from __future__ import annotations

import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION: Literal[1] = 1

Dataset = Literal["gsm8k", "math"]
"""Answer format a grader applies. The built-in arithmetic task is graded as ``gsm8k``."""


def new_id() -> str:
    """A fresh random id (hex uuid4)."""
    return uuid.uuid4().hex


def now() -> float:
    """Wall-clock time in seconds since the epoch."""
    return time.time()


class Message(BaseModel):
    """Every body and message carries ``schema_version`` and rejects unknown fields."""

    model_config = ConfigDict(extra="forbid", frozen=False)

    schema_version: Literal[1] = Field(default=SCHEMA_VERSION, description="Wire format version.")


class ErrorBody(Message):
    """The one error body every service returns for every failure (4xx and 5xx)."""

    error: str = Field(
        description="Machine-readable code, e.g. 'validation_error', 'unauthorized'."
    )
    message: str = Field(description="What went wrong and what to change, for a human.")
    detail: list[dict[str, object]] | None = Field(
        default=None, description="Per-field problems for validation errors."
    )
    request_id: str = Field(default_factory=new_id)
