"""The reward service: FastAPI over a sandboxed grader pool.

    POST /v1/grade   GradeRequest -> GradeResponse (one verdict per item, in order)
    GET  /healthz    liveness: the process and its event loop answer
    GET  /readyz     readiness: 200 only with at least one live grader worker
    GET  /metrics    Prometheus text: verdicts by status, latency, pool restarts

Run: ``vineppo serve reward`` (settings from ``VINEPPO_REWARD_*``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Header, Request
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from services.reward.limits import Limits
from services.reward.sandbox import GraderPool
from services.reward.settings import RewardSettings
from shared.http import ApiError, BodySizeLimit, check_bearer, install_error_handlers
from shared.schemas import ErrorBody, GradeRequest, GradeResponse


class _Metrics:
    """Per-app Prometheus registry (so several apps can live in one test process)."""

    def __init__(self, pool: GraderPool) -> None:
        self.registry = CollectorRegistry()
        self.verdicts = Counter(
            "reward_verdicts", "Verdicts returned, by status.", ["status"], registry=self.registry
        )
        self.latency = Histogram(
            "reward_grade_request_seconds",
            "Wall-clock time of one POST /v1/grade.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.items = Histogram(
            "reward_grade_batch_items",
            "Items per request.",
            buckets=(1, 8, 64, 256, 1024, 4096),
            registry=self.registry,
        )
        restarts = Gauge(
            "reward_pool_restarts", "Grader workers killed and replaced.", registry=self.registry
        )
        restarts.set_function(lambda: pool.restarts)
        alive = Gauge("reward_pool_workers_alive", "Live grader workers.", registry=self.registry)
        alive.set_function(lambda: pool.alive)


def create_app(settings: RewardSettings | None = None) -> FastAPI:
    """Build the reward app; its lifespan starts and stops the grader pool."""
    cfg = settings or RewardSettings()
    pool = GraderPool(
        workers=cfg.workers,
        timeout_s=cfg.timeout_s,
        memory_mb=cfg.memory_mb,
        chunk_size=cfg.chunk_size,
        fallbacks=cfg.fallbacks,
        limits=Limits(enabled=cfg.symbolic_caps, symbolic_cpu_s=min(0.5, cfg.timeout_s / 2)),
    )
    metrics = _Metrics(pool)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        pool.start()
        try:
            yield
        finally:
            pool.close()

    app = FastAPI(
        title="vineppo reward",
        version="1",
        description="Sandboxed math grader for GSM8K and MATH answers.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=cfg.max_body_bytes)
    app.state.pool = pool
    app.state.settings = cfg
    errors = {code: {"model": ErrorBody} for code in (401, 413, 422, 503)}

    @app.post("/v1/grade", response_model=GradeResponse, responses=errors)  # type: ignore[arg-type]
    async def grade(
        body: GradeRequest, request: Request, authorization: str | None = Header(default=None)
    ) -> GradeResponse:
        """Grade each item in a sandboxed worker; verdicts come back in request order."""
        if cfg.require_token and cfg.api_token is not None:
            check_bearer(authorization, cfg.api_token)
        if len(body.items) > cfg.max_batch:
            raise ApiError(
                413,
                f"batch of {len(body.items)} items exceeds max_batch={cfg.max_batch}; "
                "split it (RewardClient does this for you)",
            )
        t0 = time.perf_counter()
        verdicts = await pool.grade_batch(body.items)
        metrics.latency.observe(time.perf_counter() - t0)
        metrics.items.observe(len(body.items))
        for v in verdicts:
            metrics.verdicts.labels(status=v.status).inc()
        return GradeResponse(verdicts=verdicts)

    def _status() -> dict[str, object]:
        return {
            "status": "ok",
            "workers": cfg.workers,
            "alive": pool.alive,
            "restarts": pool.restarts,
            "graded": pool.graded,
        }

    @app.get("/healthz")
    async def healthz() -> dict[str, object]:
        """Liveness: 200 while the process answers (dead graders are replaced, see readyz)."""
        return _status()

    @app.get("/readyz", responses={503: {"model": ErrorBody}})
    async def readyz() -> dict[str, object]:
        """Readiness: 200 with at least one live grader worker; with none, 503 (and the dead
        idle workers are restarted in the background, so the next probe can pass)."""
        if pool.alive == 0:
            if not healing:
                healing.append(asyncio.create_task(_heal()))
            raise ApiError(503, f"0 of {cfg.workers} grader workers alive", "not_ready")
        return _status()

    healing: list[asyncio.Task[None]] = []

    async def _heal() -> None:
        try:
            await pool.heal()
        finally:
            healing.clear()

    @app.get("/metrics")
    async def prometheus() -> Response:
        """Prometheus text exposition."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
