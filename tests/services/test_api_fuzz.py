"""Property-based fuzzing of the reward and rollout HTTP APIs from their OpenAPI schemas
(schemathesis + Hypothesis, ``tests/fuzz_support.py``), against real uvicorn servers on
127.0.0.1: no response ≥ 500, and every 4xx body is the typed ``ErrorBody``.

Bounded for CI: ≤ 100 cases per operation and generation mode, ≈ 15 s per service. The
seed is fixed (``VINEPPO_FUZZ_SEED`` overrides it); ``bench/fuzz.py`` runs the same longer.
(The trainer has no HTTP API: it is a client of these two.)
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import httpx
import pytest

from shared.schemas import ErrorBody
from tests.fuzz_support import Api, FuzzReport, fuzz_api, fuzz_stack

pytestmark = [pytest.mark.server, pytest.mark.slow]

SEED = int(os.environ.get("VINEPPO_FUZZ_SEED", "0"))
BUDGET_S = 15.0
OPERATIONS = {
    "reward": {"POST /v1/grade", "GET /healthz", "GET /readyz", "GET /metrics"},
    "rollout": {"POST /v1/generate", "POST /v1/value", "POST /v1/weights", "GET /healthz",
                "GET /readyz", "GET /metrics"},
}  # fmt: skip


@pytest.fixture(scope="module")
def apis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Api]]:
    with fuzz_stack(tmp_path_factory.mktemp("fuzz")) as found:
        yield {api.name: api for api in found}


def _check(report: FuzzReport) -> None:
    statuses = dict(sorted(report.statuses.items()))
    print(
        f"\n{report.name}: {sum(report.calls.values())} calls in {report.seconds:.1f}s "
        f"(seed {SEED}): {dict(report.calls)} statuses {statuses}"
    )
    assert report.server_errors == [], "\n".join(report.server_errors)
    assert report.untyped == [], "\n".join(report.untyped)
    # it really exercised the API: every operation, accepted and refused cases, bodies
    assert set(report.calls) == OPERATIONS[report.name]
    assert all(n >= 10 for label, n in report.calls.items() if label.startswith("POST"))
    assert report.statuses[200] > 0 and report.statuses[422] > 0 and report.statuses[401] > 0


@pytest.mark.parametrize("name", ["reward", "rollout"])
def test_fuzz_from_openapi_no_5xx_and_typed_errors(apis: dict[str, Api], name: str) -> None:
    _check(fuzz_api(apis[name], max_examples=100, budget_s=BUDGET_S, seed=SEED))


def test_weights_paths_that_were_500s_are_typed_400s(apis: dict[str, Api]) -> None:
    """The fuzzer's findings: ``os.path`` raises ValueError on a NUL byte, and
    ``expanduser`` RuntimeError on ``~<no such user>`` (both were 500s)."""
    api = apis["rollout"]
    digests = {"a\x00.safetensors": "0" * 64}
    cases = [
        {"version": 99, "path": "policy-v1\x00x"},
        {"version": 99, "path": "policy-v1", "sha256": digests},
        {"version": 99, "path": "~no-such-user-\x87/policy-v1"},
    ]
    for body in cases:
        resp = httpx.post(f"{api.base_url}/v1/weights", json=body, headers=api.headers)
        assert resp.status_code == 400, resp.text
        assert ErrorBody.model_validate_json(resp.text).error == "bad_path"
        anon = httpx.post(f"{api.base_url}/v1/weights", json=body)  # the token comes first
        assert anon.status_code == 401
