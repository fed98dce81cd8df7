"""Async HTTP client of the reward service, used by the rollout service and the trainer.

async with RewardClient("http://127.0.0.1:8001") as rc:
    verdicts = await rc.grade([GradeItem(response=..., gold=..., dataset="gsm8k")])
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from types import TracebackType

import httpx

from shared.schemas import GradeItem, GradeRequest, GradeResponse, Verdict


class RewardError(RuntimeError):
    """The reward service refused a request (4xx) or stayed unavailable after all retries."""


class RewardClient:
    """Batches items, retries connect errors / 5xx with exponential backoff, keeps order."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = 60.0,
        retries: int = 3,
        batch_size: int = 512,
        backoff_s: float = 0.2,
        token: str | None = None,
    ) -> None:
        """``token``: sent as ``Authorization: Bearer`` (a service with ``REQUIRE_TOKEN``)."""
        if batch_size < 1 or retries < 0:
            raise ValueError("batch_size >= 1 and retries >= 0 are required")
        self.base_url = base_url.rstrip("/")
        self.retries = retries
        self.batch_size = batch_size
        self.backoff_s = backoff_s
        headers = {"Authorization": f"Bearer {token}"} if token else None
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout_s, headers=headers)

    async def grade(self, items: Sequence[GradeItem]) -> list[Verdict]:
        """One verdict per item, in order (batches are sent concurrently)."""
        batches = [items[i : i + self.batch_size] for i in range(0, len(items), self.batch_size)]
        results = await asyncio.gather(*(self._grade_batch(b) for b in batches))
        return [v for batch in results for v in batch]

    async def _grade_batch(self, items: Sequence[GradeItem]) -> list[Verdict]:
        body = GradeRequest(items=list(items)).model_dump(mode="json")
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                resp = await self._http.post("/v1/grade", json=body)
            except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError) as exc:
                if last:
                    raise RewardError(
                        f"reward service unreachable at {self.base_url}: {exc}"
                    ) from exc
            else:
                if resp.status_code < 400:
                    verdicts = GradeResponse.model_validate_json(resp.content).verdicts
                    if len(verdicts) != len(items):
                        raise RewardError(f"{len(verdicts)} verdicts for {len(items)} items")
                    return verdicts
                if resp.status_code < 500 or last:
                    raise RewardError(f"reward service answered {resp.status_code}: {resp.text}")
            await asyncio.sleep(self.backoff_s * 2**attempt)
        raise AssertionError("unreachable")

    async def healthz(self) -> dict[str, object]:
        resp = await self._http.get("/healthz")
        resp.raise_for_status()
        data: dict[str, object] = resp.json()
        return data

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> RewardClient:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
