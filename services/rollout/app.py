"""The rollout service's FastAPI app: generate, MC value, weight push, health, metrics.

    create_app(settings)                    # engine built from settings.model_dir in lifespan
    create_app(settings, engine=e, grader=g)  # tests / embedded use bring their own

With ``redis_url`` set, the lifespan also runs a queue worker (this process is then one of
the trainer's rollout replicas). Routes: ``POST /v1/generate``, ``POST /v1/value``,
``POST /v1/weights`` (bearer token), ``GET /healthz``, ``GET /metrics`` (Prometheus text).
Logic lives in ``service.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Header, Request
from fastapi.responses import Response

from services.rollout.engine import Engine, make_engine
from services.rollout.service import RolloutService
from services.rollout.settings import RolloutSettings
from services.rollout.values import Grader
from shared.http import ApiError, BodySizeLimit, install_error_handlers
from shared.schemas import (
    ErrorBody,
    GenerateRequest,
    GenerateResult,
    ValueRequest,
    ValueResult,
    WeightsRequest,
    WeightsStatus,
)

_ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorBody} for code in (400, 401, 403, 404, 413, 415, 422, 503)
}


def _build_engine(settings: RolloutSettings) -> Engine:
    if settings.model_dir is None:
        raise ValueError("no model: set VINEPPO_ROLLOUT_MODEL_DIR (or --model) or pass engine=")
    kw: dict[str, object] = {"dtype": settings.dtype, "max_batch": settings.max_batch}
    if settings.engine == "torch":
        kw["device"] = settings.device
    return make_engine(settings.engine, settings.model_dir, **kw)


def _start_worker(
    settings: RolloutSettings, engine: Engine, grader: Grader | None
) -> tuple[asyncio.Task[None] | None, asyncio.Event]:
    """With a Redis URL the service is also a queue replica: a worker task in this loop."""
    stop = asyncio.Event()
    if not settings.redis_url or grader is None:
        return None, stop
    from services.rollout.worker import WorkerConfig, run_worker
    from shared.queue import make_queue

    config = WorkerConfig(
        checkpoint_root=settings.checkpoint_root, max_weights_bytes=settings.max_weights_bytes
    )
    queue = make_queue(settings.redis_url)
    return asyncio.create_task(run_worker(queue, engine, grader, config, stop)), stop


def create_app(
    settings: RolloutSettings | None = None,
    *,
    engine: Engine | None = None,
    grader: Grader | None = None,
) -> FastAPI:
    """The app; its lifespan builds (and closes) whatever engine/grader was not passed."""
    settings = settings or RolloutSettings()
    if engine is None and settings.model_dir is None:
        raise ValueError("no model: set VINEPPO_ROLLOUT_MODEL_DIR (or --model) or pass engine=")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        eng = engine or await asyncio.to_thread(_build_engine, settings)
        client = None
        if grader is None:
            from services.reward.client import RewardClient

            token = settings.reward_api_token
            client = RewardClient(
                settings.reward_url,
                timeout_s=settings.grade_timeout_s,
                token=token.get_secret_value() if token is not None else None,
            )
        app.state.service = RolloutService(settings, eng, grader or client)  # type: ignore[arg-type]
        worker, stop = _start_worker(settings, eng, grader or client)
        try:
            yield
        finally:
            if worker is not None:
                stop.set()
                await asyncio.gather(worker, return_exceptions=True)
            if client is not None:
                await client.aclose()
            if engine is None:
                await eng.close()

    app = FastAPI(title="vineppo rollout", version="1", lifespan=lifespan, responses=_ERRORS)
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)

    def service(request: Request) -> RolloutService:
        svc: RolloutService | None = getattr(request.app.state, "service", None)
        if svc is None:
            raise ApiError(503, "engine not loaded yet")
        return svc

    @app.post("/v1/generate", response_model=GenerateResult)
    async def generate(
        req: GenerateRequest, request: Request, authorization: str | None = Header(default=None)
    ) -> GenerateResult:
        """``n`` sampled completions per prompt, with per-token log-probs."""
        svc = service(request)
        svc.check_read_token(authorization)
        return await svc.generate(req)

    @app.post("/v1/value", response_model=ValueResult)
    async def value(
        req: ValueRequest, request: Request, authorization: str | None = Header(default=None)
    ) -> ValueResult:
        """MC value of each partial solution: mean return of ``k`` graded continuations."""
        svc = service(request)
        svc.check_read_token(authorization)
        return await svc.value(req)

    @app.post("/v1/weights", response_model=WeightsStatus)
    async def weights(
        req: WeightsRequest, request: Request, authorization: str | None = Header(default=None)
    ) -> WeightsStatus:
        """Load policy ``version`` from safetensors under the checkpoint root (bearer token)."""
        return await service(request).load_weights(req, authorization)

    @app.get("/healthz", response_model=WeightsStatus)
    async def healthz(request: Request) -> WeightsStatus:
        """Loaded model and policy version."""
        return service(request).health()

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        """Prometheus text: tokens/s, requests, queue depth, policy version."""
        return Response(service(request).metrics_text(), media_type="text/plain; version=0.0.4")

    return app
