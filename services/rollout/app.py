"""The rollout service's FastAPI app: generate, MC value, weight push, health, metrics.

    create_app(settings)                    # engine built from settings.model_dir in lifespan
    create_app(settings, engine=e, grader=g)  # tests / embedded use bring their own

With ``redis_url`` set, the lifespan also runs a queue worker (this process is then one of
the trainer's rollout replicas). Engine, reward client and worker are built by
``replica.py`` from the settings, as ``vineppo serve rollout --worker-only`` builds them.
Routes: ``POST /v1/generate``, ``POST /v1/value``, ``POST /v1/weights`` (bearer token),
``GET /healthz`` (liveness), ``GET /readyz`` (readiness), ``GET /metrics`` (Prometheus
text). Logic lives in ``service.py``; the handlers (module-level, on ``router``) find the
service in ``request.app.state``, and ``Replica`` is the lifespan's state: the engine build,
the queue worker, and what an engine or worker death does.

An engine built from settings loads in the background: the port answers at once, ``/healthz``
is 200 while the process can make progress (503 once building the engine failed: restart
it), ``/readyz`` is 200 only when the engine is loaded, no weight load is running and the
last one did not fail (HTTP push or queue announcement).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Header, Request
from fastapi.responses import JSONResponse, Response

from services.rollout.engine.base import Engine, EngineDead
from services.rollout.replica import build_engine, reward_client, start_worker, warm_up
from services.rollout.service import RolloutService
from services.rollout.settings import RolloutSettings
from services.rollout.values import Grader
from shared.http import ApiError, BodySizeLimit, error_response, install_error_handlers
from shared.schemas import (
    ErrorBody,
    GenerateRequest,
    GenerateResult,
    RolloutHealth,
    ValueRequest,
    ValueResult,
    WeightsRequest,
    WeightsStatus,
)

log = logging.getLogger(__name__)

_ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorBody} for code in (400, 401, 403, 404, 409, 413, 415, 422, 503)
}


def _start_worker(
    settings: RolloutSettings, engine: Engine, grader: Grader | None
) -> tuple[Any, asyncio.Task[None] | None, asyncio.Event]:
    """With a Redis URL the service is also a queue replica: a worker task in this loop."""
    stop = asyncio.Event()
    if not settings.redis_url or grader is None:
        return None, None, stop
    worker, task = start_worker(settings, engine, grader, stop)
    return worker, task, stop


def health_of(app: FastAPI) -> RolloutHealth:
    """The service's state: the engine build, a weight load running or failed mid-swap (HTTP
    or queue: the engine's ``PolicyGate``), then the queue worker's last announcement."""
    svc: RolloutService | None = getattr(app.state, "service", None)
    if svc is None or app.state.boot_state == "failed":  # not built, or the engine died
        return RolloutHealth(state=app.state.boot_state, error=app.state.boot_error)
    state, error = svc.state, svc.error
    if state == "ready" and svc.gate.loading is not None:
        state, error = "loading", None
    elif state == "ready" and svc.gate.error is not None:
        state, error = "failed", svc.gate.error
    worker = getattr(app.state, "worker", None)
    if worker is not None and worker.state in ("loading", "failed") and state == "ready":
        state, error = worker.state, worker.error
    return RolloutHealth(
        state=state,  # type: ignore[arg-type]
        version=svc.engine.version,
        model=svc.engine.model_name,
        error=error,
    )


class Replica:
    """What the lifespan of one app runs: build the engine (or take the one given), the
    ``RolloutService`` and the queue worker; mark the replica failed when the build fails, the
    engine dies or the worker stops; close what it built. Its state is in ``app.state``."""

    def __init__(
        self,
        app: FastAPI,
        settings: RolloutSettings,
        engine: Engine | None,
        grader: Grader | None,
        stop_on_failure: bool,
    ) -> None:
        self.app, self.settings, self.stop_on_failure = app, settings, stop_on_failure
        self.given_engine, self.grader = engine, grader
        self.client = reward_client(settings) if grader is None else None
        self.engine: Engine | None = None
        self.task: asyncio.Task[None] | None = None
        self.stop = asyncio.Event()
        app.state.boot_state, app.state.boot_error = "loading", None

    async def boot(self) -> None:
        try:
            eng = self.given_engine
            if eng is None:
                eng = await asyncio.to_thread(build_engine, self.settings)
                await warm_up(eng)
        except Exception as exc:
            self._fail(f"{type(exc).__name__}: {exc}")
            log.error("could not build the engine: %s", self.app.state.boot_error)
            log.debug("engine build traceback", exc_info=True)
            return
        self.engine = eng
        graded_by = self.grader or self.client
        assert graded_by is not None  # the client is built whenever no grader is given
        state = self.app.state
        state.service = RolloutService(self.settings, eng, graded_by)
        state.service.on_engine_dead = self.engine_died
        state.worker, task, self.stop = _start_worker(self.settings, eng, graded_by)
        if task is not None:
            self.task = task
            task.add_done_callback(self.worker_ended)
        state.boot_state = "ready"

    def _fail(self, reason: str) -> None:
        """Not live any more (/healthz and /readyz 503); with ``stop_on_failure`` the server
        stops (`vineppo serve rollout` then exits with the reason)."""
        self.app.state.boot_state, self.app.state.boot_error = "failed", reason
        server = getattr(self.app.state, "server", None)
        if self.stop_on_failure and server is not None:
            server.should_exit = True

    def engine_died(self, reason: str) -> None:
        """`vineppo serve rollout` exits (status 1) so that compose / Kubernetes start a fresh
        process."""
        self.app.state.engine_dead = True
        log.error("%s: this replica must be restarted", reason)
        self._fail(reason)

    def worker_ended(self, task: asyncio.Task[None]) -> None:
        """A queue worker that stops by itself is a replica that serves no queue jobs:
        not live, so that it is restarted (an engine death or any error it raised)."""
        exc = None if task.cancelled() else task.exception()
        if isinstance(exc, EngineDead):
            self.engine_died(str(exc))
        elif exc is not None:
            self.engine_died(f"the queue worker stopped: {type(exc).__name__}: {exc}")

    async def close(self) -> None:
        """Stop the worker; close the reward client and the engine built here."""
        if self.task is not None:
            self.stop.set()
            await asyncio.gather(self.task, return_exceptions=True)
        if self.client is not None:
            await self.client.aclose()
        if self.given_engine is None and self.engine is not None:
            await self.engine.close()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Boot (in the background while a model loads: the port answers liveness), serve,
        close."""
        booting = None
        if self.given_engine is not None:
            await self.boot()
        else:
            booting = asyncio.create_task(self.boot())
        try:
            yield
        finally:
            if booting is not None and not booting.done():
                booting.cancel()
                await asyncio.gather(booting, return_exceptions=True)
            await self.close()


def create_app(
    settings: RolloutSettings | None = None,
    *,
    engine: Engine | None = None,
    grader: Grader | None = None,
    stop_on_boot_failure: bool = False,
) -> FastAPI:
    """The app; its lifespan builds (and closes) whatever engine/grader was not passed.

    ``stop_on_boot_failure``: when the engine cannot be built, stop the server
    (``shared.serve.run`` puts it in ``app.state.server``) instead of staying up unready;
    ``vineppo serve rollout`` then exits with the reason (``app.state.boot_error``)."""
    settings = settings or RolloutSettings()
    if engine is None and settings.model_dir is None:
        raise ValueError("no model: set VINEPPO_ROLLOUT_MODEL_DIR (or --model) or pass engine=")

    def lifespan(app: FastAPI) -> AbstractAsyncContextManager[None]:
        return Replica(app, settings, engine, grader, stop_on_boot_failure).running()

    app = FastAPI(title="vineppo rollout", version="1", lifespan=lifespan, responses=_ERRORS)
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.include_router(router)
    return app


# -- routes (on ``router``; ``create_app`` includes it) ------------------------------------
router = APIRouter()


def service(request: Request) -> RolloutService:
    svc: RolloutService | None = getattr(request.app.state, "service", None)
    if svc is None:
        raise ApiError(503, "engine not loaded yet")
    return svc


@router.post("/v1/generate", response_model=GenerateResult)
async def generate(
    req: GenerateRequest, request: Request, authorization: str | None = Header(default=None)
) -> GenerateResult:
    """``n`` sampled completions per prompt, with per-token log-probs."""
    svc = service(request)
    svc.check_read_token(authorization)
    return await svc.generate(req)


@router.post("/v1/value", response_model=ValueResult)
async def value(
    req: ValueRequest, request: Request, authorization: str | None = Header(default=None)
) -> ValueResult:
    """MC value of each partial solution: mean return of ``k`` graded continuations."""
    svc = service(request)
    svc.check_read_token(authorization)
    return await svc.value(req)


@router.post("/v1/weights", response_model=WeightsStatus)
async def weights(
    req: WeightsRequest, request: Request, authorization: str | None = Header(default=None)
) -> WeightsStatus:
    """Load policy ``version`` from safetensors under the checkpoint root (bearer token)."""
    svc = service(request)
    names = [req.path, *(req.sha256 or {})]
    if any("\x00" in n for n in names) or req.path.startswith("~"):
        svc.check_token(authorization)  # no path check before the token check
        raise ApiError(
            400,
            "path or shard name has a NUL byte, or the path starts with '~'"
            " (no home-directory expansion): name it under the checkpoint root",
            "bad_path",
        )
    return await svc.load_weights(req, authorization)


@router.get("/healthz", response_model=RolloutHealth)
async def healthz(request: Request) -> RolloutHealth | JSONResponse:
    """Liveness: 200 while the process can make progress (loading included); 503 once
    building the engine failed (restart the process)."""
    health = health_of(request.app)
    if getattr(request.app.state, "boot_state", "ready") == "failed":
        return JSONResponse(status_code=503, content=health.model_dump(mode="json"))
    return health


@router.get("/readyz", response_model=RolloutHealth)
async def readyz(request: Request) -> RolloutHealth | JSONResponse:
    """Readiness: 200 only with the engine loaded, no weight load running, and the last
    load (HTTP push or queue announcement) not failed; else 503 ``not_ready``."""
    health = health_of(request.app)
    if health.state != "ready":
        why = f"state {health.state}" + (f": {health.error}" if health.error else "")
        return error_response(503, "not_ready", why)
    return health


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    """Prometheus text: tokens/s, requests, queue depth, policy version."""
    return Response(service(request).metrics_text(), media_type="text/plain; version=0.0.4")
