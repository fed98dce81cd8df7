"""Fixtures shared by the whole suite."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import RedisProcess, redis_process, redis_url_from_env

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
"""The real GSM8K / MATH-500 files, vendored in the repo's data/ (see data/README.md)."""


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA_DIR.is_dir():
        pytest.skip(f"real datasets not found at {DATA_DIR}")
    return DATA_DIR


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real Redis: ``REDIS_URL`` if set, else a private redis-server on a free port."""
    url = redis_url_from_env()
    if url:
        yield url
        return
    with redis_process() as r:
        yield r.url


@pytest.fixture()
def private_redis() -> Iterator[RedisProcess]:
    """A redis-server this test owns and may restart (never the machine's own)."""
    with redis_process() as r:
        yield r


@pytest.fixture()
def key_prefix() -> str:
    """A unique key prefix so tests never collide in a shared Redis."""
    return f"vineppo-test-{uuid.uuid4().hex[:8]}:"
