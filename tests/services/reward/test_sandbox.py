"""The sandboxed pool: order, timeouts that kill only their own item, restarts, isolation."""

from __future__ import annotations

import os
import signal
import time

import pytest

from services.reward.grading import grade
from services.reward.limits import Limits
from services.reward.sandbox import GraderPool
from shared.schemas import GradeItem

pytestmark = pytest.mark.server
NO_CAPS = Limits(enabled=False)  # let pathological answers reach sympy, so only the kill saves us


def tower(k: int) -> GradeItem:
    """A power tower: with caps off it hangs big-integer arithmetic or exhausts RLIMIT_AS."""
    return GradeItem(response=f"\\boxed{{2^{{2^{{2^{{2^{{{k}}}}}}}}}}}", gold="3", dataset="math")


def hang(k: int) -> GradeItem:
    """(10^6 + k)!: with caps off, seconds of C-level arithmetic in little memory."""
    return GradeItem(response=f"\\boxed{{{1_000_000 + k}!}}", gold="3", dataset="math")


def good(i: int) -> GradeItem:
    return GradeItem(response=f"so #### {i}", gold=f"#### {i}", dataset="gsm8k")


async def test_pool_matches_pure_grader_in_order() -> None:
    items = [
        GradeItem(response="\\boxed{\\dfrac12}", gold="0.5", dataset="math"),
        GradeItem(response="#### 7", gold="8", dataset="gsm8k"),
        GradeItem(response="nothing", gold="8", dataset="gsm8k"),
        GradeItem(response="\\boxed{[1,2)}", gold="(1,2)", dataset="math"),
        GradeItem(response="#### 7", gold="8", dataset="gsm8k"),  # duplicate of item 1
    ] + [good(i) for i in range(200)]
    async with GraderPool(workers=2, timeout_s=2.0, memory_mb=1024, chunk_size=16) as pool:
        verdicts = await pool.grade_batch(items)
        assert pool.restarts == 0
    expected = [grade(it.response, it.gold, it.dataset) for it in items]
    assert [v.model_dump() for v in verdicts] == [v.model_dump() for v in expected]
    assert [v.status for v in verdicts[:5]] == [
        "correct",
        "incorrect",
        "no_answer",
        "incorrect",
        "incorrect",
    ]


async def test_default_limit_kills_a_hung_item_and_spares_the_rest() -> None:
    items = [good(1), hang(0), good(2), good(3)]
    async with GraderPool(workers=2, timeout_s=2.0, memory_mb=1024, limits=NO_CAPS) as pool:
        pids = {w.proc.pid for w in pool._all}
        t0 = time.monotonic()
        verdicts = await pool.grade_batch(items)
        elapsed = time.monotonic() - t0
        assert [v.status for v in verdicts] == ["correct", "timeout", "correct", "correct"]
        assert verdicts[1].reward == 0.0 and "2 s" in (verdicts[1].detail or "")
        assert elapsed < 2.0 + 1.0
        assert pool.restarts == 1 and pool.alive == 2
        assert {w.proc.pid for w in pool._all} != pids  # the hung worker was replaced
        assert (await pool.grade_batch([good(5)]))[0].status == "correct"


async def test_caps_answer_pathological_inputs_without_any_timeout() -> None:
    items = [tower(22), GradeItem(response="\\boxed{100000!}", gold="3", dataset="math")]
    async with GraderPool(workers=1, timeout_s=2.0) as pool:
        t0 = time.monotonic()
        verdicts = await pool.grade_batch(items)
        assert time.monotonic() - t0 < 1.0
        assert [v.status for v in verdicts] == ["incorrect", "incorrect"]
        assert pool.restarts == 0


async def test_thousand_timeouts_mixed_with_good_items() -> None:
    # 1,000 hanging items (20 distinct factorials, repeated) interleaved with 1,000 good ones;
    # timeout lowered to 0.1 s to keep CI fast. Identical items are graded once.
    bad = [hang(i % 20) for i in range(1000)]
    items = [it for pair in zip(bad, [good(i) for i in range(1000)], strict=True) for it in pair]
    async with GraderPool(workers=2, timeout_s=0.1, memory_mb=1024, limits=NO_CAPS) as pool:
        t0 = time.monotonic()
        verdicts = await pool.grade_batch(items)
        elapsed = time.monotonic() - t0
        assert [v.status for v in verdicts[0::2]] == ["timeout"] * 1000
        assert [v.status for v in verdicts[1::2]] == ["correct"] * 1000
        assert pool.restarts == 20
        assert elapsed < 20 * (0.1 + 1.0) / 2 + 5.0  # distinct timeouts × (limit + restart)
        assert pool.alive == 2


async def test_distinct_timeouts_each_cost_only_their_limit() -> None:
    items = [hang(100 + i) for i in range(12)] + [good(i) for i in range(50)]
    async with GraderPool(workers=2, timeout_s=0.2, memory_mb=1024, limits=NO_CAPS) as pool:
        verdicts = await pool.grade_batch(items)
        assert [v.status for v in verdicts[:12]] == ["timeout"] * 12
        assert {v.status for v in verdicts[12:]} == {"correct"}
        assert pool.restarts == 12


async def test_power_towers_end_as_timeout_or_memory_error() -> None:
    items = [tower(20 + i) for i in range(4)] + [good(1)]
    async with GraderPool(workers=2, timeout_s=0.5, memory_mb=1024, limits=NO_CAPS) as pool:
        t0 = time.monotonic()
        verdicts = await pool.grade_batch(items)
        assert time.monotonic() - t0 < 4 * (0.5 + 1.0) / 2 + 2.0
        assert {v.status for v in verdicts[:4]} <= {"timeout", "error"}
        assert all(v.reward == 0.0 for v in verdicts[:4])
        assert verdicts[4].status == "correct"
        assert (await pool.grade_batch([good(2)]))[0].status == "correct"


async def test_worker_killed_from_outside_is_replaced() -> None:
    async with GraderPool(workers=1, timeout_s=2.0) as pool:
        os.kill(pool._all[0].proc.pid, signal.SIGKILL)
        pool._all[0].proc.join(5)
        assert pool.alive == 0
        verdicts = await pool.grade_batch([good(1), good(2)])
        assert [v.status for v in verdicts] == ["correct", "correct"]
        assert pool.alive == 1 and pool.restarts == 1


async def test_each_worker_runs_under_the_address_space_limit() -> None:
    async with GraderPool(workers=2, timeout_s=2.0, memory_mb=700, chunk_size=1) as pool:
        await pool.grade_batch([good(1), good(2)])  # one chunk each: both workers are up
        for w in pool._all:
            limits = open(f"/proc/{w.proc.pid}/limits").read()  # noqa: SIM115
            line = next(ln for ln in limits.splitlines() if ln.startswith("Max address space"))
            assert line.split()[3:5] == [str(700 << 20)] * 2, line
        assert os.getpid() not in {w.proc.pid for w in pool._all}  # never graded in-process


def test_bad_pool_arguments() -> None:
    with pytest.raises(ValueError, match="workers"):
        GraderPool(workers=0)


def _publish_forever(progress, stop) -> None:  # type: ignore[no-untyped-def]
    """A worker publishing item after item as fast as it can; item n 'started' at time n."""
    from services.reward.sandbox import publish_item

    n = 1
    while not stop.value:
        publish_item(progress, n, float(n))
        n += 1


def test_supervisor_never_pairs_a_start_with_the_next_items_index() -> None:
    """The sandbox race: a supervisor reading the progress array while the worker moves on
    must never blame item n+1 for item n's start time (a real process writes, shared memory).
    """
    import multiprocessing as mp

    from services.reward.sandbox import current_item

    ctx = mp.get_context("fork")
    progress, stop = ctx.RawArray("d", 2), ctx.RawValue("b", 0)
    writer = ctx.Process(target=_publish_forever, args=(progress, stop), daemon=True)
    writer.start()
    try:
        reads = mismatched = 0
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline or reads < 1000:
            item = current_item(progress)
            if item is not None:
                reads += 1
                mismatched += item[1] != float(item[0])
    finally:
        stop.value = 1
        writer.join(timeout=10)
    assert reads >= 1000
    assert mismatched == 0, f"{mismatched} of {reads} reads paired an index with another start"
