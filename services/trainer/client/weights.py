"""Weight push: write ``policy-vN/`` atomically under the checkpoint root, announce N, prune.

    path = save_policy(model, tokenizer, root, version=3)   # root/policy-v3/, complete or absent
    await announce(queue, version=3, path=path)              # weights:latest + pub/sub (+ SHA-256s)
    prune_policies(root, keep=2)                             # only the last two stay

The directory is written to ``root/.policy-v3.tmp-<id>/`` (same filesystem), every file and
the directory are fsync'ed, then it is renamed to ``policy-v3/`` and the root is fsync'ed —
a replica never sees a half-written checkpoint under a ``policy-vN`` name.

With several ranks every rank calls `save_policy` / `push_policy` (under ZeRO-3 the
parameters are partitioned and gathering them is a collective); rank 0 alone writes,
announces and prunes.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import re
import shutil
import tempfile
import time
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch.distributed as dist

from shared.queue import JobQueue
from shared.schemas import WeightsAnnouncement

if TYPE_CHECKING:
    from services.trainer.client.local_services import Services

_POLICY_DIR = re.compile(r"^policy-v(\d+)$")


def policy_dir(root: Path, version: int) -> Path:
    return Path(root) / f"policy-v{version}"


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def full_weights(model: Any) -> AbstractContextManager[Any]:
    """Context in which ``model`` holds its full parameters: ZeRO-3 leaves each rank a slice
    (the module's tensors are empty placeholders), so gather them — a collective, every rank
    must enter it. A no-op for any other model."""
    params = list(model.parameters()) if hasattr(model, "parameters") else []
    if not any(hasattr(p, "ds_id") for p in params):
        return nullcontext()
    import deepspeed

    gathered: AbstractContextManager[Any] = deepspeed.zero.GatheredParameters(
        params, modifier_rank=None
    )
    return gathered


def save_policy(model: Any, tokenizer: Any, root: Path, version: int) -> Path:
    """Write ``model`` (safetensors + config) and ``tokenizer`` to ``root/policy-v<version>``.

    Atomic: the directory appears complete or not at all. An existing ``policy-v<version>``
    is replaced (a resumed run re-saving the same version). Every rank calls it; rank 0
    writes, the others wait until the directory is there.
    """
    final = policy_dir(Path(root), version)
    with full_weights(model):
        if _rank() == 0:
            _write_policy(model, tokenizer, Path(root), version)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
    return final


def _write_policy(model: Any, tokenizer: Any, root: Path, version: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    final = policy_dir(root, version)
    tmp = Path(tempfile.mkdtemp(prefix=f".policy-v{version}.tmp-", dir=root))
    try:
        # 1) write, 2) fsync every file and the directory, 3) rename, 4) fsync the parent
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        for f in tmp.rglob("*"):
            if f.is_file():
                _fsync_path(f)
        _fsync_path(tmp)
        if final.exists():
            old = root / f".policy-v{version}.old-{os.getpid()}"
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
        _fsync_path(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def list_policies(root: Path) -> list[int]:
    """Versions with a complete ``policy-vN/`` directory under ``root``, ascending."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [_POLICY_DIR.match(p.name) for p in root.iterdir() if p.is_dir()]
    return sorted(int(m.group(1)) for m in found if m)


def prune_policies(root: Path, keep: int = 2, current: int | None = None) -> list[int]:
    """Delete all but the newest ``keep`` versions (and stale temp dirs); return the deleted.
    With ``current`` (the version just pushed), "newest" counts from it down and versions
    above it go too: they are a previous run's, left in a reused output directory, and
    keeping them would prune the version being served (its replicas then wait forever)."""
    versions = list_policies(root)
    if current is not None:
        kept = [v for v in versions if v <= current][-keep:] if keep > 0 else []
        doomed = [v for v in versions if v not in kept]
    else:
        doomed = versions[:-keep] if keep > 0 else versions
    for v in doomed:
        shutil.rmtree(policy_dir(root, v), ignore_errors=True)
    for p in Path(root).glob(".policy-v*.tmp-*"):
        if p.is_dir() and p.stat().st_mtime < _newest_mtime(root):
            shutil.rmtree(p, ignore_errors=True)
    return doomed


def _newest_mtime(root: Path) -> float:
    versions = list_policies(root)
    return policy_dir(root, versions[-1]).stat().st_mtime if versions else 0.0


def shard_digests(path: Path) -> dict[str, str]:
    """SHA-256 (hex) of every ``*.safetensors`` shard of a policy dir (or of one file)."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(path.glob("*.safetensors"))
    out: dict[str, str] = {}
    for f in files:
        h = hashlib.sha256()
        with open(f, "rb") as fh:
            for block in iter(functools.partial(fh.read, 1 << 20), b""):
                h.update(block)
        out[f.name] = h.hexdigest()
    return out


GENERATION = time.time_ns() // 1000
"""This trainer process's generation (its start time in µs): a resumed run's announcements
supersede those of the run it resumes, so replicas that a killed run moved past its last
checkpoint follow the resumed run back (``WeightsAnnouncement.generation``)."""


def announcement(version: int, path: Path) -> WeightsAnnouncement:
    """The announcement of ``policy-v<version>`` at ``path``, with each shard's SHA-256."""
    return WeightsAnnouncement(
        version=version,
        path=str(Path(path).resolve()),
        sha256=shard_digests(path),
        generation=GENERATION,
    )


async def announce(queue: JobQueue, version: int, path: Path) -> WeightsAnnouncement:
    """Tell every replica that ``policy-v<version>`` is ready: latest key + pub/sub. The
    announcement carries the SHA-256 of every shard; replicas verify it before loading."""
    ann = await asyncio.to_thread(announcement, version, path)
    await queue.publish_weights(ann)
    return ann


async def push_policy(
    queue: JobQueue, model: Any, tokenizer: Any, root: Path, version: int, keep: int = 2
) -> WeightsAnnouncement:
    """Save, announce, prune; drop the job streams of pruned versions and of ``version-keep``
    (nobody serves them any more: workers read only the stream of the version they hold).
    Every rank calls it (the save may be a collective); only rank 0 announces and prunes."""
    path = save_policy(model, tokenizer, root, version)
    if _rank() != 0:
        return WeightsAnnouncement(version=version, path=str(Path(path).resolve()))
    ann = await announce(queue, version, path)
    stale = set(prune_policies(root, keep=keep, current=version))
    if version - keep >= 0:
        stale.add(version - keep)
    for v in sorted(stale):
        await queue.drop_version(v)
    return ann


async def serve_policy(
    services: Services, model: Any, tokenizer: Any, root: Path, version: int
) -> None:
    """`push_policy`, then wait until ``services.min_replicas`` replicas serve ``version``.
    Every rank calls it; rank 0 alone waits, and a timeout there fails every rank
    (`on_main`)."""
    from services.trainer.client.jobs import wait_for_replicas
    from services.trainer.runtime.distributed import on_main

    await push_policy(services.queue, model, tokenizer, root, version)
    await on_main(
        lambda: wait_for_replicas(
            services.queue, version, services.min_replicas, services.replica_timeout_s
        )
    )
