"""The rollout service's logic behind its routes: request checks, engine calls, metrics.

``app.py`` keeps the route handlers thin; everything they do lives in ``RolloutService``.
Engine/weights/grader failures become ``ApiError`` (typed 4xx/503 bodies), never a 500.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from services.rollout.engine.base import Engine, EngineDead, EngineInputError, WeightsError
from services.rollout.engine.weights import WeightsRefused, read_weights
from services.rollout.policy import PolicyGate
from services.rollout.settings import RolloutSettings
from services.rollout.value_cache import ValueCache
from services.rollout.values import Grader, estimate_values
from shared.http import ApiError, check_bearer
from shared.schemas import (
    GenerateRequest,
    GenerateResult,
    GradeItem,
    ValueRequest,
    ValueResult,
    Verdict,
    WeightsRequest,
    WeightsStatus,
)

T = TypeVar("T")


class _GuardedGrader:
    """Turns any failure of the reward service into a 503 for our caller."""

    def __init__(self, inner: Grader) -> None:
        self.inner = inner

    async def grade(self, items: Sequence[GradeItem]) -> list[Verdict]:
        try:
            return await self.inner.grade(items)
        except Exception as exc:
            raise ApiError(
                503, f"reward service failed: {type(exc).__name__}: {exc}", "reward_unavailable"
            ) from exc


class RolloutService:
    """Owns the engine and grader for the app's lifetime (built in the lifespan)."""

    def __init__(self, settings: RolloutSettings, engine: Engine, grader: Grader) -> None:
        self.settings = settings
        self.engine = engine
        self.grader = _GuardedGrader(grader)
        self.gate = PolicyGate.of(engine)  # shared with this engine's queue worker
        self.in_flight = 0
        self.state: str = "ready"  # "failed" once the engine died
        self.error: str | None = None
        # called once the engine died (the app marks itself not live and stops)
        self.on_engine_dead: Callable[[str], None] | None = None
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "rollout_requests", "Requests served, by route.", ["route"], registry=self.registry
        )
        self.gauges = {
            name: Gauge(f"rollout_{name}", doc, registry=self.registry)
            for name, doc in {
                "tokens_per_second": "Sampled tokens per second of engine busy time.",
                "sampled_tokens": "Tokens sampled since start.",
                "prompt_tokens": "Prompt tokens prefilled since start.",
                "queue_depth": "Requests in flight (waiting for or using the engine).",
                "policy_version": "Policy version loaded.",
                "engine_busy_seconds": "Seconds the engine spent computing.",
                "value_cache_hits": "Value-cache hits (states served without sampling).",
                "value_cache_misses": "Value-cache misses (seeded states sampled).",
                "value_cache_entries": "States in the value cache.",
                "value_cache_evictions": "States evicted from the full value cache.",
            }.items()
        }

    # -- checks ------------------------------------------------------------------------
    def _check_batch(self, count: int, per_item: int, what: str) -> None:
        s = self.settings
        if count > s.max_items:
            raise ApiError(413, f"{count} items exceed this server's limit of {s.max_items}")
        if not s.min_k <= per_item <= s.max_k:
            raise ApiError(
                422, f"{what} = {per_item} is outside [{s.min_k}, {s.max_k}]", "k_out_of_range"
            )

    def check_token(self, authorization: str | None) -> None:
        expected = self.settings.api_token
        if expected is None:
            raise ApiError(
                403, "weight pushes are disabled: set VINEPPO_ROLLOUT_API_TOKEN", "forbidden"
            )
        check_bearer(authorization, expected)

    def check_read_token(self, authorization: str | None) -> None:
        """``/v1/generate`` and ``/v1/value``: the bearer token only with ``require_token``."""
        if self.settings.require_token and self.settings.api_token is not None:
            check_bearer(authorization, self.settings.api_token)

    # -- routes --------------------------------------------------------------------------
    async def generate(self, req: GenerateRequest) -> GenerateResult:
        self._check_batch(len(req.prompts), req.n, "n")
        self.requests.labels("generate").inc()
        version = self.engine.version
        outputs = await self._engine_call(
            self.engine.generate(req.prompts, req.n, req.sampling, stream_offset=req.stream_offset)
        )
        return GenerateResult(outputs=outputs, policy_version=version)

    @property
    def value_cache(self) -> ValueCache:
        return ValueCache.of(self.engine, self.settings.value_cache_entries)

    async def value(self, req: ValueRequest) -> ValueResult:
        self._check_batch(len(req.items), req.k, "k")
        self.requests.labels("value").inc()
        version = self.engine.version
        values = await self._engine_call(
            estimate_values(
                self.engine,
                self.grader,
                req.items,
                req.k,
                req.sampling,
                stream_offset=req.stream_offset,
                cache=self.value_cache,
                target_se=req.target_se,
            )
        )
        return ValueResult(values=values, policy_version=version)

    async def load_weights(self, req: WeightsRequest, authorization: str | None) -> WeightsStatus:
        """Load ``req.version`` through the engine's ``PolicyGate``. A refused push (any 4xx)
        leaves the replica's state as it was; only an engine failing mid-swap (503
        ``load_failed``) makes it ``failed`` (the gate's ``error``) until a load succeeds."""
        self.check_token(authorization)
        self.requests.labels("weights").inc()
        s = self.settings
        read = functools.partial(
            read_weights,
            s.checkpoint_root,
            req.path,
            max_bytes=s.max_weights_bytes,
            sha256=req.sha256,
        )
        try:
            await self.gate.load(req.version, read)
        except WeightsRefused as exc:
            raise ApiError(exc.status, str(exc), exc.code) from exc
        except WeightsError as exc:
            raise ApiError(400, str(exc), "bad_weights") from exc
        except EngineDead as exc:
            raise self._engine_died(exc) from exc
        except Exception as exc:  # the engine failed mid-swap: not ready until a load works
            raise ApiError(
                503, f"loading v{req.version} failed: {type(exc).__name__}: {exc}", "load_failed"
            ) from exc
        return self.health()

    def health(self) -> WeightsStatus:
        return WeightsStatus(version=self.engine.version, model=self.engine.model_name)

    def metrics_text(self) -> bytes:
        st = self.engine.stats()
        values = {
            "tokens_per_second": st.tokens_per_s,
            "sampled_tokens": st.sampled_tokens,
            "prompt_tokens": st.prompt_tokens,
            "queue_depth": self.in_flight,
            "policy_version": self.engine.version,
            "engine_busy_seconds": st.busy_s,
            **self.value_cache.stats(),
        }
        for name, v in values.items():
            self.gauges[name].set(v)
        return generate_latest(self.registry)

    async def _engine_call(self, coro: Awaitable[T]) -> T:
        self.in_flight += 1
        start = time.perf_counter()
        try:
            return await coro
        except EngineInputError as exc:
            raise ApiError(400, str(exc), exc.code) from exc
        except EngineDead as exc:
            raise self._engine_died(exc) from exc
        finally:
            self.in_flight -= 1
            self.engine.stats().extra["last_request_s"] = time.perf_counter() - start

    def _engine_died(self, exc: EngineDead) -> ApiError:
        self.state, self.error = "failed", str(exc)
        if self.on_engine_dead is not None:
            self.on_engine_dead(str(exc))
        return ApiError(503, f"{exc}; this replica is restarting", "engine_dead")
