"""A pool of sandboxed grader processes: per-item wall-clock limit, memory limit, isolation.

Items go to workers in chunks over pipes (one message per chunk each way, plus a flush every
``FLUSH_S``). Each worker publishes the index and start time of the item it is grading in a
shared array; a supervisor thread per worker kills (SIGKILL) and replaces a worker whose item
ran past ``timeout_s`` — SIGALRM cannot interrupt C-level big-integer arithmetic — marks that
item ``timeout`` and re-runs the rest of the chunk on the fresh worker. Workers are forked
from a forkserver that preloaded and warmed the grader, and each slot keeps one booted spare
process, so a restart costs milliseconds. Scripts using the pool need an
``if __name__ == "__main__":`` guard (the forkserver imports ``__main__``).

    async with GraderPool(workers=2, timeout_s=2.0, memory_mb=1024) as pool:
        verdicts = await pool.grade_batch(items)
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from services.reward.limits import DEFAULT_LIMITS, Limits
from shared.schemas import GradeItem, Verdict

FLUSH_S = 0.02
_FIELDS = ("status", "reward", "extracted", "normalized", "gold_normalized", "detail")
Task = tuple[int, str, str, str]  # (index in batch, response, gold, dataset)
Row = tuple[Any, ...]  # a Verdict's _FIELDS


def _worker_main(conn: Any, progress: Any, memory_mb: int, fallbacks: bool, limits: Limits) -> None:
    """Worker loop: receive a chunk of tasks, grade each, send rows back (in flushes)."""
    import resource

    from services.reward.grading import grade

    if memory_mb > 0:
        cap = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    while True:
        try:
            chunk: list[Task] = conn.recv()
        except (EOFError, OSError):
            return
        out: list[tuple[int, Row]] = []
        last_flush = time.monotonic()
        for idx, response, gold, dataset in chunk:
            publish_item(progress, idx)
            try:
                v = grade(response, gold, dataset, fallbacks=fallbacks, limits=limits)
                row: Row = tuple(getattr(v, f) for f in _FIELDS)
            except MemoryError:
                row = ("error", 0.0, None, None, None, "memory limit exceeded")
            except Exception as exc:  # a grader bug is a typed verdict, never a crash
                row = ("error", 0.0, None, None, None, f"{type(exc).__name__}: {exc}"[:300])
            out.append((idx, row))
            if progress[1] - last_flush > FLUSH_S:
                conn.send((False, out))
                out, last_flush = [], time.monotonic()
        progress[1] = 0.0
        conn.send((True, out))


def publish_item(progress: Any, idx: int, started: float | None = None) -> None:
    """Worker side: announce that item ``idx`` starts now (order matters: see current_item)."""
    progress[1] = 0.0
    progress[0] = idx
    progress[1] = time.monotonic() if started is None else started


def current_item(progress: Any) -> tuple[int, float] | None:
    """(index, start time) of the item a worker is grading, or None between items.

    The worker publishes an item as ``progress[1] = 0; progress[0] = idx; progress[1] = t``.
    Reading index, then start, then index again pairs them exactly: had the worker moved to
    the next item between the reads, the second index differs (or the start is 0) and the
    read is discarded. Reading the start first and the index after could pair the start of
    an item that ran just past its limit with the index of the NEXT item, which would then
    be marked ``timeout`` instead (and the slow one re-run).
    """
    idx = progress[0]
    started = progress[1]
    if not started or progress[0] != idx:
        return None
    return int(idx), float(started)


def _row_verdict(row: Row) -> Verdict:
    return Verdict.model_construct(schema_version=1, **dict(zip(_FIELDS, row, strict=True)))


def _failed(status: str, detail: str) -> Row:
    return (status, 0.0, None, None, None, detail)


@dataclass
class _Worker:
    """One sandboxed process and the pipe/progress array the supervisor uses to watch it."""

    pool: GraderPool
    proc: Any = None
    conn: Any = None
    progress: Any = None
    restarts: int = 0

    spare: tuple[Any, Any, Any] | None = None  # a pre-forked, already booted replacement

    def _spawn(self) -> tuple[Any, Any, Any]:
        ctx = self.pool._ctx
        parent, child = ctx.Pipe()
        progress = ctx.RawArray("d", 2)
        args = (child, progress, self.pool.memory_mb, self.pool.fallbacks, self.pool.limits)
        proc = ctx.Process(target=_worker_main, args=args, daemon=True)
        proc.start()
        child.close()
        return proc, parent, progress

    def start(self) -> None:
        self.proc, self.conn, self.progress = self._spawn()
        self.spare = self._spawn()

    @staticmethod
    def _kill(proc: Any, conn: Any) -> None:
        if proc is not None and proc.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, 9)
        if proc is not None:
            proc.join(timeout=5)
        if conn is not None:
            conn.close()

    def kill(self, *, spare: bool = False) -> None:
        self._kill(self.proc, self.conn)
        self.proc = self.conn = None
        if spare and self.spare is not None:
            self._kill(self.spare[0], self.spare[1])
            self.spare = None

    def restart(self) -> None:
        """Replace the process: swap in the spare (already booted), then fork a new spare."""
        self.kill()
        self.restarts += 1
        self.pool.restarts += 1
        if self.spare is not None and self.spare[0].is_alive():
            self.proc, self.conn, self.progress = self.spare
            self.spare = self._spawn()
        else:
            self.kill(spare=True)
            self.start()

    def run(self, tasks: list[Task]) -> dict[int, Row]:
        """Grade ``tasks`` (blocking; runs in a supervisor thread). Returns index -> row."""
        done: dict[int, Row] = {}
        pending, stalls = list(tasks), 0
        while pending:
            if self.proc is None or not self.proc.is_alive():
                self.restart()
            failed = self._run_once(pending, done)
            before, pending = len(pending), [t for t in pending if t[0] not in done]
            stalls = stalls + 1 if failed is None and len(pending) == before else 0
            if stalls >= 3:  # a worker that dies without starting an item: give up on the chunk
                done.update((t[0], _failed("error", "grader worker keeps dying")) for t in pending)
                return done
            if failed is not None:
                done[failed[0]] = failed[1]
                pending = [t for t in pending if t[0] != failed[0]]
                self.restart()
        return done

    def _run_once(self, pending: list[Task], done: dict[int, Row]) -> tuple[int, Row] | None:
        """Send one chunk; collect rows. Returns (index, row) of an item that killed the worker."""
        timeout_s = self.pool.timeout_s
        tick = min(0.05, timeout_s / 4)
        try:
            self.conn.send(pending)
        except (OSError, ValueError):
            return None  # worker died before reading: restart and resend all
        while True:
            try:
                if self.conn.poll(tick):
                    finished, rows = self.conn.recv()
                    done.update(rows)
                    if finished:
                        return None
                    continue
            except (EOFError, OSError):
                return self._dead_item("worker died (out of memory or crashed)", "error")
            item = current_item(self.progress)
            if item is not None and time.monotonic() - item[1] > timeout_s:
                return item[0], _failed("timeout", f"grading exceeded {timeout_s:g} s")
            if not self.proc.is_alive() and not self.conn.poll(0):
                return self._dead_item("worker died (out of memory or crashed)", "error")

    def _dead_item(self, detail: str, status: str) -> tuple[int, Row] | None:
        item = current_item(self.progress)
        return None if item is None else (item[0], _failed(status, detail))


@dataclass
class GraderPool:
    """``workers`` sandboxed grader processes; ``grade_batch`` returns verdicts in order."""

    workers: int = 2
    timeout_s: float = 2.0
    memory_mb: int = 1024
    chunk_size: int = 128
    fallbacks: bool = True
    limits: Limits = DEFAULT_LIMITS
    restarts: int = 0
    graded: int = 0
    _ctx: Any = field(default=None, repr=False)
    _free: asyncio.Queue[_Worker] | None = field(default=None, repr=False)
    _all: list[_Worker] = field(default_factory=list, repr=False)
    _threads: ThreadPoolExecutor | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.workers < 1 or self.timeout_s <= 0 or self.chunk_size < 1:
            raise ValueError("workers >= 1, timeout_s > 0 and chunk_size >= 1 are required")

    def start(self) -> None:
        """Start the forkserver (preloading the grader) and the worker processes."""
        self._ctx = mp.get_context("forkserver")
        self._ctx.set_forkserver_preload(["__main__", "services.reward._preload"])
        self._threads = ThreadPoolExecutor(self.workers, thread_name_prefix="grader-supervisor")
        self._free = asyncio.Queue()
        for _ in range(self.workers):
            w = _Worker(self)
            w.start()
            self._all.append(w)
            self._free.put_nowait(w)

    def close(self) -> None:
        for w in self._all:
            w.kill(spare=True)
        self._all.clear()
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)
            self._threads = None

    async def __aenter__(self) -> GraderPool:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    @property
    def alive(self) -> int:
        return sum(1 for w in self._all if w.proc is not None and w.proc.is_alive())

    async def heal(self) -> int:
        """Restart every idle worker whose process died; returns how many were restarted.

        Busy workers restart themselves; this revives a pool that lost its processes while
        nothing was being graded (otherwise it would wait for the next request)."""
        if self._free is None:
            return 0
        idle: list[_Worker] = []
        while not self._free.empty():
            idle.append(self._free.get_nowait())
        dead = [w for w in idle if w.proc is None or not w.proc.is_alive()]
        try:
            loop = asyncio.get_running_loop()
            for w in dead:
                await loop.run_in_executor(self._threads, w.restart)
        finally:
            for w in idle:
                self._free.put_nowait(w)
        return len(dead)

    async def grade_batch(self, items: Sequence[GradeItem]) -> list[Verdict]:
        """Grade every item in a worker; identical items are graded once. Order is kept."""
        if self._free is None:
            raise RuntimeError("GraderPool.start() was not called")
        first: dict[tuple[str, str, str], int] = {}
        owner = [
            first.setdefault((it.response, it.gold, it.dataset), i) for i, it in enumerate(items)
        ]
        tasks: list[Task] = [(i, *key) for key, i in first.items()]
        size = max(1, min(self.chunk_size, -(-len(tasks) // self.workers)))
        chunks = [tasks[i : i + size] for i in range(0, len(tasks), size)]
        results: dict[int, Row] = {}
        for part in await asyncio.gather(*(self._run_chunk(c) for c in chunks)):
            results.update(part)
        self.graded += len(items)
        return [_row_verdict(results[owner[i]]) for i in range(len(items))]

    async def _run_chunk(self, chunk: list[Task]) -> dict[int, Row]:
        assert self._free is not None
        worker = await self._free.get()
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._threads, worker.run, chunk)
        finally:
            self._free.put_nowait(worker)
