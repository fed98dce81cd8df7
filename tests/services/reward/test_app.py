"""The reward service over real uvicorn: API, typed 4xx errors, metrics, adversarial inputs."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from services.reward.app import create_app
from services.reward.client import RewardClient, RewardError
from services.reward.settings import RewardSettings
from shared.schemas import ErrorBody, GradeItem
from tests.support import free_port, serve_app

pytestmark = pytest.mark.server
LIMIT_S = 2.0  # the default per-item limit, kept for these tests


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    settings = RewardSettings(workers=2, max_batch=64, max_body_bytes=4 * 1024 * 1024)
    assert settings.timeout_s == LIMIT_S
    with serve_app(create_app(settings)) as base:
        yield base


@pytest.fixture(scope="module")
def uncapped_url() -> Iterator[str]:
    """No size caps: a power tower really hangs sympy, so only the hard kill answers it."""
    with serve_app(create_app(RewardSettings(workers=1, symbolic_caps=False))) as base:
        yield base


def post(base: str, body: object) -> httpx.Response:
    """POST JSON with ASCII escapes, so lone surrogates travel as ``\\udXXX`` like real JSON."""
    headers = {"content-type": "application/json"}
    return httpx.post(f"{base}/v1/grade", content=json.dumps(body), headers=headers, timeout=30)


def item(response: str, gold: str = "3", dataset: str = "math") -> dict[str, str]:
    return {"response": response, "gold": gold, "dataset": dataset}


def assert_healthy(base: str) -> None:
    health = httpx.get(f"{base}/healthz", timeout=10).json()
    assert health["status"] == "ok"
    r = post(base, {"items": [item("#### 4", "4", "gsm8k")]})
    assert r.status_code == 200 and r.json()["verdicts"][0]["status"] == "correct"


def test_grade_returns_verdicts_in_order(url: str) -> None:
    r = post(
        url,
        {
            "items": [
                item("\\boxed{\\frac12}", "0.5"),
                item("#### 5", "6", "gsm8k"),
                item("no answer", "6", "gsm8k"),
            ]
        },
    )
    assert r.status_code == 200
    assert [v["status"] for v in r.json()["verdicts"]] == ["correct", "incorrect", "no_answer"]


@pytest.mark.parametrize(
    ("content", "status"),
    [
        (b"{not json", 422),  # malformed JSON
        (b'{"items": "x"}', 422),  # wrong type
        (b'{"items": []}', 422),  # empty batch
        (b'{"items": [{"response": 1, "gold": "1", "dataset": "math"}]}', 422),  # wrong field type
        (b'{"items": [{"response": "1", "gold": "1", "dataset": "mmlu"}]}', 422),  # bad dataset
        (
            b'{"items": [{"response": "\xff\xfe", "gold": "1", "dataset": "math"}]}',
            400,
        ),  # invalid UTF-8 bytes
        (b'{"items": [{"response": "\\ud800", "gold": "1", "dataset": "math"}]}', 422),
        # ^ a lone surrogate escape: pydantic refuses it as a string
        (b'{"items": [{"response": "1", "gold": "1", "dataset": "math", "x": 1}]}', 422),  # extra
    ],
)
def test_bad_bodies_get_typed_4xx(url: str, content: bytes, status: int) -> None:
    r = httpx.post(
        f"{url}/v1/grade", content=content, timeout=10, headers={"content-type": "application/json"}
    )
    assert r.status_code == status, r.text
    ErrorBody.model_validate(r.json())


def test_oversize_batch_and_body_get_413(url: str) -> None:
    r = post(url, {"items": [item("#### 1", "1", "gsm8k")] * 65})
    assert r.status_code == 413 and ErrorBody.model_validate(r.json()).error == "payload_too_large"
    r = post(url, {"items": [item("x" * (5 * 1024 * 1024))]})
    assert r.status_code == 413
    ErrorBody.model_validate(r.json())
    assert httpx.get(f"{url}/v1/grade").status_code == 405


def test_oversize_body_sent_chunked_gets_413(url: str) -> None:
    """No Content-Length: the limit is counted as the body arrives, and the answer is 413."""

    def chunks() -> Iterator[bytes]:
        yield b'{"items": [{"dataset": "gsm8k", "gold": "1", "response": "'
        for _ in range(80):
            yield b"x" * 65536  # 5 MiB in all, over the 4 MiB limit
        yield b'"}]}'

    r = httpx.post(
        f"{url}/v1/grade",
        content=chunks(),
        timeout=30,
        headers={"content-type": "application/json"},
    )
    assert "content-length" not in r.request.headers
    assert r.status_code == 413, r.text
    assert ErrorBody.model_validate(r.json()).error == "payload_too_large"
    assert_healthy(url)


@pytest.mark.parametrize("token", ["", "tooshort"])
def test_empty_or_short_token_is_refused_at_start_up(
    token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pydantic import ValidationError

    monkeypatch.setenv("VINEPPO_REWARD_API_TOKEN", token)
    with pytest.raises(ValidationError, match="api_token"):
        RewardSettings()


async def test_optional_bearer_auth_on_grade() -> None:
    token = "reward-token-0123456789"
    settings = RewardSettings(workers=1, api_token=token, require_token=True)
    body = {"items": [item("#### 4", "4", "gsm8k")]}
    with serve_app(create_app(settings)) as base:
        assert post(base, body).status_code == 401
        r = httpx.post(f"{base}/v1/grade", json=body, headers={"Authorization": "Bearer"})
        assert r.status_code == 401 and ErrorBody.model_validate(r.json()).error == "unauthorized"
        async with RewardClient(base, token=token) as rc:
            verdicts = await rc.grade([GradeItem(response="#### 4", gold="4", dataset="gsm8k")])
        assert verdicts[0].status == "correct"


ADVERSARIAL = [
    item("\\boxed{2^{2^{2^{2^{2^{22}}}}}}"),  # power tower
    item("\\boxed{100000!}"),  # huge factorial
    item("\\boxed{" + "{" * 50_000 + "1" + "}" * 50_000 + "}"),  # 50,000 nested braces
    item("\\boxed{" + "{" * 50_000),  # 50,000 unclosed braces
    item("y" * 1_000_000 + "\\boxed{3}"),  # a 1 MB response
    item("\\boxed{3}\x00\x00", "3\x00"),  # NUL bytes
    item("#### 3" + "\x00" * 1000, "3", "gsm8k"),  # NUL bytes, GSM8K
]


@pytest.mark.parametrize("bad", ADVERSARIAL, ids=range(len(ADVERSARIAL)))
def test_adversarial_inputs_answer_within_limit(url: str, bad: dict[str, str]) -> None:
    t0 = time.monotonic()
    r = post(url, {"items": [bad, item("#### 2", "2", "gsm8k")]})
    assert time.monotonic() - t0 < LIMIT_S + 1.0
    assert r.status_code == 200, r.text
    first, second = r.json()["verdicts"]
    assert first["status"] in ("correct", "incorrect", "no_answer", "timeout")
    assert second["status"] == "correct"
    assert_healthy(url)


def test_lone_surrogates_and_invalid_utf8_leave_the_service_healthy(url: str) -> None:
    for body in (
        b'{"items": [{"response": "\\boxed{3\\ud800}\\udfff", "gold": "3", "dataset": "math"}]}',
        b'{"items": [{"response": "\xed\xa0\x80"}]}',
    ):
        t0 = time.monotonic()
        r = httpx.post(
            f"{url}/v1/grade",
            content=body,
            timeout=10,
            headers={"content-type": "application/json"},
        )
        assert time.monotonic() - t0 < LIMIT_S + 1.0
        assert r.status_code in (400, 422), r.text
        ErrorBody.model_validate(r.json())
    assert_healthy(url)


def test_hung_item_is_killed_at_the_default_limit(uncapped_url: str) -> None:
    t0 = time.monotonic()
    r = post(uncapped_url, {"items": [item("#### 1", "1", "gsm8k"), item("\\boxed{1000000!}")]})
    assert time.monotonic() - t0 < LIMIT_S + 1.0
    assert [v["status"] for v in r.json()["verdicts"]] == ["correct", "timeout"]
    assert_healthy(uncapped_url)
    metrics = httpx.get(f"{uncapped_url}/metrics").text
    assert 'reward_verdicts_total{status="timeout"} 1.0' in metrics
    assert "reward_pool_restarts 1.0" in metrics


def test_metrics_health_and_docs(url: str) -> None:
    post(url, {"items": [item("#### 1", "1", "gsm8k"), item("#### 1", "2", "gsm8k")]})
    text = httpx.get(f"{url}/metrics").text
    assert 'reward_verdicts_total{status="correct"}' in text
    assert 'reward_verdicts_total{status="incorrect"}' in text
    assert "reward_grade_request_seconds_bucket" in text
    assert "reward_pool_restarts 0.0" in text
    assert httpx.get(f"{url}/healthz").json()["alive"] == 2
    assert httpx.get(f"{url}/docs").status_code == 200
    assert "/v1/grade" in httpx.get(f"{url}/openapi.json").json()["paths"]


async def test_client_batches_and_keeps_order(url: str) -> None:
    items = [
        GradeItem(response=f"#### {i}", gold=str(i + i % 2), dataset="gsm8k") for i in range(150)
    ]
    async with RewardClient(url, batch_size=64) as rc:
        verdicts = await rc.grade(items)
    assert [v.status for v in verdicts] == [
        "correct" if i % 2 == 0 else "incorrect" for i in range(150)
    ]


async def test_client_retries_then_fails_on_connect_errors() -> None:
    rc = RewardClient(f"http://127.0.0.1:{free_port()}", retries=2, backoff_s=0.05)
    t0 = time.monotonic()
    with pytest.raises(RewardError, match="unreachable"):
        await rc.grade([GradeItem(response="#### 1", gold="1", dataset="gsm8k")])
    assert time.monotonic() - t0 >= 0.05 + 0.1  # two backoffs happened
    await rc.aclose()


async def test_client_does_not_retry_4xx(url: str) -> None:
    items = [GradeItem(response="#### 1", gold="1", dataset="gsm8k")] * 100
    async with RewardClient(url, batch_size=100, retries=3) as rc:
        with pytest.raises(RewardError, match="413"):
            await rc.grade(items)


async def test_client_retries_5xx_with_backoff() -> None:
    """A flaky front (503 twice, then the real reward app's answer) is retried, in order."""
    flaky, calls = FastAPI(), []

    @flaky.post("/v1/grade")
    async def _grade(request: Request) -> JSONResponse:
        calls.append(time.monotonic())
        if len(calls) <= 2:
            return JSONResponse({"error": "unavailable"}, status_code=503)
        body = await request.json()
        verdicts = [
            {
                "status": "correct" if it["response"] == it["gold"] else "incorrect",
                "reward": float(it["response"] == it["gold"]),
            }
            for it in body["items"]
        ]
        return JSONResponse({"verdicts": verdicts})

    with serve_app(flaky) as base:
        async with RewardClient(base, retries=3, backoff_s=0.05) as rc:
            items = [GradeItem(response="1", gold=g, dataset="gsm8k") for g in ("1", "2")]
            verdicts = await rc.grade(items)
    assert [v.status for v in verdicts] == ["correct", "incorrect"]
    assert len(calls) == 3 and calls[2] - calls[0] >= 0.05 + 0.1


def test_readyz_fails_with_zero_live_workers_and_recovers() -> None:
    """Liveness stays 200; readiness is 503 while no grader process lives, then heals."""
    import os
    import signal

    app = create_app(RewardSettings(workers=1))
    with serve_app(app) as base:
        assert httpx.get(f"{base}/readyz").status_code == 200
        for w in app.state.pool._all:  # kill the live grader (its spare stays)
            os.kill(w.proc.pid, signal.SIGKILL)
            w.proc.join(timeout=5)
        r = httpx.get(f"{base}/readyz")
        assert r.status_code == 503, r.text
        err = ErrorBody.model_validate(r.json())
        assert err.error == "not_ready" and "0 of 1" in err.message
        assert httpx.get(f"{base}/healthz").status_code == 200
        deadline = time.monotonic() + 20
        while httpx.get(f"{base}/readyz").status_code != 200:  # the probe revived the pool
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert_healthy(base)
