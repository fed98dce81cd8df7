"""Weight push on disk: atomic policy-vN/ dirs, pruning to the last two, the announcement."""

from __future__ import annotations

from pathlib import Path

import pytest
import transformers

from services.trainer.client.weights import list_policies, prune_policies, push_policy, save_policy
from shared.queue import InProcessQueue
from shared.schemas import GenerateRequest, Job
from tests.services.rollout.tiny import make_model, make_tokenizer

TEXTS = ["Question: 2+3=?\nAnswer: 5\n#### 5"]


@pytest.fixture(scope="module")
def tiny() -> tuple[object, object]:
    tok = make_tokenizer(TEXTS)
    return make_model(tok, seed=0), tok


def test_save_policy_writes_a_complete_loadable_dir(
    tiny: tuple[object, object], tmp_path: Path
) -> None:
    model, tok = tiny
    path = save_policy(model, tok, tmp_path, version=3)
    assert path == tmp_path / "policy-v3"
    names = {p.name for p in path.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= names
    assert [p.name for p in tmp_path.iterdir()] == ["policy-v3"]  # no temp dir left behind
    loaded = transformers.AutoModelForCausalLM.from_pretrained(path)
    for (name, a), (_, b) in zip(
        model.state_dict().items(), loaded.state_dict().items(), strict=True
    ):  # type: ignore[attr-defined]
        assert a.equal(b), name


def test_failed_save_leaves_nothing_under_a_policy_name(tmp_path: Path) -> None:
    class Broken:
        def save_pretrained(self, d: Path, **_: object) -> None:
            (Path(d) / "model.safetensors").write_bytes(b"half")
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_policy(Broken(), None, tmp_path, version=1)
    assert list(tmp_path.iterdir()) == []


def test_resave_replaces_and_prune_keeps_last_two(
    tiny: tuple[object, object], tmp_path: Path
) -> None:
    model, tok = tiny
    for v in range(4):
        save_policy(model, tok, tmp_path, version=v)
    save_policy(model, tok, tmp_path, version=3)
    assert list_policies(tmp_path) == [0, 1, 2, 3]
    assert prune_policies(tmp_path, keep=2) == [0, 1]
    assert list_policies(tmp_path) == [2, 3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy-v2", "policy-v3"]


async def test_push_policy_announces_and_drops_old_streams(
    tiny: tuple[object, object], tmp_path: Path
) -> None:
    model, tok = tiny
    q = InProcessQueue()
    await q.submit(Job(kind="generate", policy_version=0, generate=GenerateRequest(prompts=["a"])))
    for v in (1, 2):
        ann = await push_policy(q, model, tok, tmp_path, version=v)
    latest = await q.latest_weights()
    assert latest is not None and latest.version == 2 and ann.version == 2
    assert Path(latest.path) == (tmp_path / "policy-v2").resolve()
    assert list_policies(tmp_path) == [1, 2]
    assert await q.depth(0) == 0  # v0 pruned: its stream is gone


async def test_a_fresh_run_in_a_used_directory_prunes_the_old_runs_versions(
    tiny: tuple[object, object], tmp_path: Path
) -> None:
    """A killed run left policy-v12 and -v13; a fresh run in the same output directory pushes
    v0. Pruning by "newest two" kept v12/v13 and deleted v0, so no replica could load the
    version the trainer waited for (a sweep hung on it); now v0 stays and the others go."""
    model, tok = tiny
    for v in (12, 13):
        save_policy(model, tok, tmp_path, version=v)
    q = InProcessQueue()
    await push_policy(q, model, tok, tmp_path, version=0)
    assert list_policies(tmp_path) == [0]
    await push_policy(q, model, tok, tmp_path, version=1)
    assert list_policies(tmp_path) == [0, 1]
    assert prune_policies(tmp_path, keep=1, current=0) == [1]
