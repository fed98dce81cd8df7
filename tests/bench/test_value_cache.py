"""bench/value_cache.py on a micro model and the torch engine: the repeated request is served
from the cache with nothing sampled, and a push empties it (the same path as on SmolLM2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import value_cache


@pytest.mark.server
def test_repeats_hit_the_cache_and_a_push_empties_it(tmp_path: Path, micro_model: Path) -> None:
    doc = tmp_path / "value_cache.md"
    value_cache.main(["--model", str(micro_model), "--engine", "torch", "--problems", "2",
                      "--k", "3", "--max-tokens", "16", "--repeats", "2",
                      "--doc", str(doc)])  # fmt: skip
    res = json.loads(doc.with_suffix(".json").read_text())
    first, hits, pushed = res["rows"].values()
    states = res["states"]
    assert states >= 4 and first["states cached"] == 0 and first["tokens sampled"] > 0
    assert hits["states cached"] == states and hits["tokens sampled"] == 0
    assert res["hits return the first returns"]
    assert pushed["policy version"] == 1 and pushed["states cached"] == 0
    c = res["counters"]
    assert c["before push"]["hits"] == 2 * states and c["before push"]["entries"] == states
    assert c["after push"]["entries"] == 0 and c["end"]["misses"] == 2 * states
    assert "× faster than sampling" in doc.read_text()
