"""The rollout worker loop in-process: real TorchEngines on a tiny model, a real reward
service, a real redis-server. Version pinning across a weight push; a failed load."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from services.reward.client import RewardClient
from services.rollout.engine.base import EngineDead
from services.rollout.engine.torch_engine import TorchEngine
from services.rollout.worker import RolloutWorker, WorkerConfig
from services.trainer.client.jobs import JobOptions, ReplicasNotReady, run_jobs, wait_for_replicas
from services.trainer.client.weights import announcement, push_policy
from shared.queue import JobQueue
from shared.schemas import GenerateRequest, Job, ReplicaHeartbeat, SamplingParams
from shared.schemas import WeightsAnnouncement as Ann
from tests.services.rollout.test_engine_death import DeadEngine
from tests.services.rollout.tiny import make_model, make_tiny_model_dir, save_weights

pytestmark = [pytest.mark.server, pytest.mark.redis]

TEXTS = ["Question: 2+3=?\nAnswer: 2+3=5\n#### 5", "Question: 7*6=?\n7*6=42\n#### 42"]
GREEDY = SamplingParams(temperature=0.0, max_tokens=8)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "model", vocab_texts=TEXTS)


def fast_config(replica_id: str, root: Path | None = None) -> WorkerConfig:
    return WorkerConfig(
        replica_id=replica_id,
        block_ms=200,
        heartbeat_s=0.2,
        heartbeat_ttl_s=1.5,
        claim_idle_ms=1500,
        checkpoint_root=root,
    )


def gen_job(version: int, prompt: str) -> Job:
    request = GenerateRequest(prompts=[prompt], n=1, sampling=GREEDY)
    return Job(kind="generate", policy_version=version, generate=request)


async def start_workers(
    queue: JobQueue, tiny_dir: Path, reward_url: str, configs: list[WorkerConfig]
) -> tuple[list[asyncio.Task[None]], asyncio.Event]:
    stop = asyncio.Event()
    tasks = []
    for cfg in configs:
        engine = TorchEngine(tiny_dir, version=0)
        worker = RolloutWorker(queue, engine, RewardClient(reward_url), cfg)
        tasks.append(asyncio.create_task(worker.run(stop)))
    await wait_for_replicas(queue, 0, len(configs), timeout=20)
    return tasks, stop


async def test_job_for_new_version_waits_for_the_push_and_is_served_by_it(
    queue: JobQueue, tiny_dir: Path, reward_url: str, tmp_path: Path
) -> None:
    import transformers

    root = tmp_path / "ckpt"
    tasks, stop = await start_workers(
        queue, tiny_dir, reward_url, [fast_config("a", root), fast_config("b", root)]
    )
    prompts = [f"Question: {i}+{i}=?\n" for i in range(6)]
    try:
        # v1 jobs are queued while every worker holds v0: nobody may serve them yet
        v1_run = asyncio.create_task(
            run_jobs(queue, [gen_job(1, p) for p in prompts], JobOptions(progress=False))
        )
        v0_results = await run_jobs(
            queue, [gen_job(0, p) for p in prompts], JobOptions(progress=False)
        )
        await asyncio.sleep(0.5)
        assert await queue.depth(1) == len(prompts) and not v1_run.done()
        # push v1 (different random weights) while its jobs wait
        tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_dir)
        v1_model = make_model(tokenizer, seed=1)
        await push_policy(queue, v1_model, tokenizer, tmp_path / "ckpt", version=1)
        v1_results = await asyncio.wait_for(v1_run, 60)
        await wait_for_replicas(queue, 1, 2, timeout=20)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    assert [r.policy_version for r in v0_results] == [0] * len(prompts)
    assert [r.policy_version for r in v1_results] == [1] * len(prompts)
    # and the text really comes from the v1 weights: compare with a reference engine
    ref = TorchEngine(tmp_path / "ckpt" / "policy-v1", version=1)
    want = await ref.generate(prompts, 1, GREEDY)
    got = [r.generate.outputs[0] for r in v1_results if r.generate is not None]
    assert [c[0].token_ids for c in got] == [w[0].token_ids for w in want]
    old = [r.generate.outputs[0][0].token_ids for r in v0_results if r.generate is not None]
    assert old != [w[0].token_ids for w in want]  # v0 and v1 do differ


async def test_worker_that_cannot_load_is_excluded_and_named(
    queue: JobQueue,
    tiny_dir: Path,
    reward_url: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import transformers

    unmounted = tmp_path / "not-mounted"
    unmounted.mkdir()
    configs = [fast_config("good", tmp_path / "c"), fast_config("broken", root=unmounted)]
    tasks, stop = await start_workers(queue, tiny_dir, reward_url, configs)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_dir)
        await push_policy(queue, make_model(tokenizer, seed=2), tokenizer, tmp_path / "c", 1)
        with caplog.at_level(logging.WARNING, logger="services.trainer.client.jobs"):
            ready = await wait_for_replicas(queue, 1, 1, timeout=20)
            with pytest.raises(ReplicasNotReady, match="broken=failed"):
                await wait_for_replicas(queue, 1, 2, timeout=1.0)
        assert [r.replica_id for r in ready] == ["good"]
        trainer_log = [r for r in caplog.records if r.name == "services.trainer.client.jobs"]
        named = [r for r in trainer_log if "broken" in r.getMessage()]
        assert named and named[0].levelno == logging.WARNING
        assert "excluded" in named[0].getMessage()
        results = await run_jobs(
            queue, [gen_job(1, "Question: 1+1=?\n")] * 4, JobOptions(progress=False)
        )
        assert {r.worker_id for r in results} == {"good"}
        broken = next(r for r in await queue.list_replicas() if r.replica_id == "broken")
        assert broken.state == "failed" and broken.failed_version == 1 and broken.error
        assert broken.loaded_version == 0
    finally:
        stop.set()
        await asyncio.gather(*tasks)


async def _beat_when(queue: JobQueue, rid: str, ok, timeout: float = 20.0) -> ReplicaHeartbeat:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        beats = [b for b in await queue.list_replicas() if b.replica_id == rid]
        if beats and ok(beats[0]):
            return beats[0]
        assert asyncio.get_running_loop().time() < deadline, beats
        await asyncio.sleep(0.1)


async def test_queue_announcements_go_through_the_weight_guard(
    queue: JobQueue, tiny_dir: Path, reward_url: str, tmp_path: Path
) -> None:
    """Symlink escape, wrong digest, no digest, older version: each refused over the queue."""
    root, outside = tmp_path / "ckpt", tmp_path / "outside"
    save_weights(tiny_dir, outside / "policy-v1", seed=5)
    (root).mkdir()
    (root / "policy-v1").symlink_to(outside / "policy-v1")  # escapes the root
    save_weights(tiny_dir, root / "policy-v2", seed=6)
    save_weights(tiny_dir, root / "policy-v4", seed=7)
    tasks, stop = await start_workers(queue, tiny_dir, reward_url, [fast_config("r", root)])
    try:
        escape = announcement(1, outside / "policy-v1").model_copy(
            update={"path": str(root / "policy-v1")}
        )
        await queue.publish_weights(escape)
        beat = await _beat_when(queue, "r", lambda b: b.failed_version == 1)
        assert beat.loaded_version == 0 and "outside the checkpoint root" in (beat.error or "")
        tampered = announcement(2, root / "policy-v2")
        tampered.sha256 = {k: "0" * 64 for k in tampered.sha256}
        await queue.publish_weights(tampered)
        beat = await _beat_when(queue, "r", lambda b: b.failed_version == 2)
        assert beat.loaded_version == 0 and "SHA-256" in (beat.error or "")
        no_digests = Ann(version=3, path=str(root / "policy-v2"), generation=tampered.generation)
        await queue.publish_weights(no_digests)
        beat = await _beat_when(queue, "r", lambda b: b.failed_version == 3)
        assert beat.loaded_version == 0 and "no shard SHA-256" in (beat.error or "")
        traversal = announcement(4, root / "policy-v4").model_copy(update={"path": "/x/.."})
        await queue.publish_weights(traversal)
        beat = await _beat_when(queue, "r", lambda b: b.failed_version == 4)
        assert beat.loaded_version == 0
        await queue.publish_weights(announcement(5, root / "policy-v4"))
        beat = await _beat_when(queue, "r", lambda b: b.loaded_version == 5 and b.state == "ready")
        await queue.publish_weights(announcement(2, root / "policy-v2"))  # older: ignored
        await asyncio.sleep(1.0)
        beat = await _beat_when(queue, "r", lambda b: b.state == "ready")
        assert beat.loaded_version == 5
    finally:
        stop.set()
        await asyncio.gather(*tasks)


async def test_dead_engine_leaves_its_job_for_another_replica(
    queue: JobQueue, tiny_dir: Path, reward_url: str
) -> None:
    """A replica whose engine died must not answer its job with an error (the trainer would
    retry into the same black hole): the job stays pending, the worker stops, and another
    replica reclaims and serves it."""
    stop = asyncio.Event()
    dead = RolloutWorker(
        queue, DeadEngine(tiny_dir, version=0), RewardClient(reward_url), fast_config("dead")
    )
    dead_task = asyncio.create_task(dead.run(stop))
    await wait_for_replicas(queue, 0, 1, timeout=20)
    job = gen_job(0, "Question: 1+1=?\n")
    answered = asyncio.create_task(run_jobs(queue, [job], JobOptions(progress=False)))
    with pytest.raises(EngineDead, match="engine core died"):
        await asyncio.wait_for(dead_task, 30)
    assert dead.state == "failed" and dead.served == 0
    assert await queue.get_results([job.job_id]) == {}  # no error stored for the trainer
    good = RolloutWorker(
        queue, TorchEngine(tiny_dir, version=0), RewardClient(reward_url), fast_config("good")
    )
    good_task = asyncio.create_task(good.run(stop))
    try:
        results = await asyncio.wait_for(answered, 60)
    finally:
        stop.set()
        await good_task
    assert [(r.ok, r.worker_id) for r in results] == [(True, "good")]
