"""The run's random streams and data order."""

from __future__ import annotations

from services.trainer.data.order import DataOrder, stream_seed

TAGS = ("sample", "mc", "validation", "restem-sample", "dpo-round", "critic-warmup", "probe")


def test_no_two_streams_share_a_seed() -> None:
    # the old arithmetic met: validation (seed + 7) = MC values of iteration 3 (2·3 + 1) and
    # RestEM's iteration 7 (seed·100003 + 7) for seed 0
    seeds = [stream_seed(s, tag, i) for s in range(4) for tag in TAGS for i in range(500)]
    assert len(set(seeds)) == len(seeds)
    assert all(0 <= x < 2**48 for x in seeds)


def test_stream_seed_is_a_pure_function() -> None:
    assert stream_seed(3, "mc", 17) == stream_seed(3, "mc", 17)
    assert stream_seed(3, "mc", 17) != stream_seed(3, "mc", 18) != stream_seed(4, "mc", 17)


def test_data_order_resumes_exactly() -> None:
    a = DataOrder(10, seed=1)
    first = a.take(7)
    b = DataOrder(10, seed=1, position=a.position)
    assert a.take(9) == b.take(9)
    assert sorted(first + DataOrder(10, 1, 7).take(3)) == list(range(10))  # one epoch
