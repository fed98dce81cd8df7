"""The replica's value cache: exactly what a fresh computation returns, only for seeded
requests of the version served, bounded, counted on /metrics, emptied by a weight load."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from services.reward.client import RewardClient
from services.rollout.app import create_app
from services.rollout.settings import RolloutSettings
from services.rollout.value_cache import ValueCache
from services.rollout.values import estimate_values
from shared.schemas import SamplingParams, ValueEstimate, ValueItem, ValueResult
from tests.services.rollout.conftest import GetEngine
from tests.services.rollout.tiny import save_weights
from tests.support import serve_app


def _est(returns: list[float], **kw: bool) -> ValueEstimate:
    verdicts = ["correct" if r else "incorrect" for r in returns]
    return ValueEstimate(
        value=sum(returns) / len(returns),
        returns=returns,
        verdicts=verdicts,  # type: ignore[arg-type]
        num_tokens=3 * len(returns),
        **kw,
    )


def test_hits_for_fewer_continuations_misses_for_more() -> None:
    cache = ValueCache(max_entries=8)
    cache.store(0, "s", _est([1.0, 0.0, 1.0, 1.0]), [3, 3, 3, 3])
    hit = cache.lookup(0, "s", 2)
    assert hit is not None and hit.returns == [1.0, 0.0] and hit.value == 0.5
    assert hit.cached and hit.num_tokens == 0
    assert cache.lookup(0, "s", 5) is None and cache.lookup(0, "other", 1) is None
    assert (cache.hits, cache.misses) == (1, 2)
    # a terminal state holds one graded return, whatever k is asked
    cache.store(0, "t", _est([1.0], terminal=True), [])
    hit = cache.lookup(0, "t", 9)
    assert hit is not None and hit.returns == [1.0] and hit.terminal


def test_a_new_version_empties_it_and_an_old_one_is_not_stored() -> None:
    cache = ValueCache(max_entries=8)
    cache.store(3, "s", _est([1.0]), [3])
    assert cache.lookup(4, "s", 1) is None and len(cache) == 0  # a weight push
    cache.store(3, "s", _est([1.0]), [3])  # a late result of the previous version
    assert len(cache) == 0


def test_least_recently_used_out_first_and_zero_is_off() -> None:
    cache = ValueCache(max_entries=2)
    for key in "abc":
        cache.store(0, key, _est([0.0]), [3])
        if key == "b":
            assert cache.lookup(0, "a", 1) is not None  # "a" used: "b" is the oldest now
    assert cache.lookup(0, "b", 1) is None and cache.lookup(0, "a", 1) is not None
    assert cache.evictions == 1 and len(cache) == 2
    off = ValueCache(max_entries=0)
    off.store(0, "a", _est([0.0]), [3])
    assert off.lookup(0, "a", 1) is None and len(off) == 0


@pytest.mark.server
async def test_a_hit_is_what_a_fresh_computation_returns(
    shared_engine: GetEngine, coin_model_dir: Path, reward_url: str
) -> None:
    """'7' or EOS at 1/2 each: returns are coin flips, so any mix-up of streams shows."""
    engine = shared_engine(coin_model_dir)
    items = [ValueItem(prompt=f"Question {c}:\n", partial_response="#### ", gold="7") for c in "AB"]
    seeded = SamplingParams(temperature=1.0, max_tokens=8, seed=5)
    cache = ValueCache(max_entries=16)
    async with RewardClient(reward_url) as grader:
        first = await estimate_values(engine, grader, items, 16, seeded, cache=cache)
        again = await estimate_values(engine, grader, items, 16, seeded, cache=cache)
        fewer = await estimate_values(engine, grader, items, 8, seeded, cache=cache)
        fresh = await estimate_values(engine, grader, items, 8, seeded)  # no cache
        moved = await estimate_values(
            engine, grader, items, 8, seeded, stream_offset=5, cache=cache
        )
        unseeded = SamplingParams(temperature=1.0, max_tokens=8)
        await estimate_values(engine, grader, items, 8, unseeded, cache=cache)
    assert not any(v.cached for v in first) and all(v.cached for v in again + fewer)
    assert [v.returns for v in again] == [v.returns for v in first]
    assert [v.returns for v in fewer] == [v.returns for v in fresh]  # the first 8 of 16
    assert all(v.num_tokens == 0 for v in again) and all(v.num_tokens > 0 for v in first)
    assert not any(v.cached for v in moved)  # other streams: other samples
    assert 0 < first[0].value < 1 and first[0].returns != first[1].returns
    assert (cache.hits, cache.misses, len(cache)) == (4, 4, 4)  # the unseeded call: no lookup


@pytest.mark.server
def test_metrics_count_hits_and_a_weight_push_empties_it(
    tiny_model_dir: Path, reward_url: str, tmp_path: Path
) -> None:
    token = "s3cret-token-of-24-chars"
    settings = RolloutSettings(
        model_dir=tiny_model_dir, checkpoint_root=tmp_path, api_token=token, reward_url=reward_url
    )
    body = {
        "items": [{"prompt": "Question: 1+1=?\n", "partial_response": "", "gold": "2"}],
        "k": 4,
        "sampling": {"temperature": 1.0, "max_tokens": 8, "seed": 3},
    }

    def metric(url: str, name: str) -> float:
        text = httpx.get(f"{url}/metrics", timeout=30).text
        line = next(x for x in text.splitlines() if x.startswith(f"rollout_{name} "))
        return float(line.split()[1])

    with serve_app(create_app(settings)) as url:
        values = []
        for _ in range(2):
            resp = httpx.post(f"{url}/v1/value", json=body, timeout=120)
            values.append(ValueResult.model_validate(resp.json()).values[0])
        assert values[1].cached and values[1].returns == values[0].returns
        assert (metric(url, "value_cache_hits"), metric(url, "value_cache_misses")) == (1, 1)
        save_weights(tiny_model_dir, tmp_path / "policy-v1", seed=1)
        push = {"version": 1, "path": "policy-v1"}
        headers = {"Authorization": f"Bearer {token}"}
        resp = httpx.post(f"{url}/v1/weights", json=push, headers=headers, timeout=120)
        assert resp.status_code == 200, resp.text
        assert metric(url, "value_cache_entries") == 0  # emptied by the load itself
        resp = httpx.post(f"{url}/v1/value", json=body, timeout=120)
        assert not ValueResult.model_validate(resp.json()).values[0].cached
        assert metric(url, "value_cache_misses") == 2 and metric(url, "value_cache_entries") == 1
