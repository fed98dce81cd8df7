"""Property-based API fuzzing from the services' own OpenAPI schemas (schemathesis).

    with fuzz_stack(tmp_dir) as apis:                  # real uvicorn servers on 127.0.0.1
        for api in apis:
            report = fuzz_api(api, max_examples=100, budget_s=20)
            assert report.server_errors == [] and report.untyped == []

``fuzz_stack`` starts the reward service (1 sandboxed grader) and the rollout service on a
tiny Llama that writes EOS first (every valid generation is instant), with a small
``max_items`` so the limits are reachable, an API token, and ``require_token``. For every
operation of each service's ``/openapi.json``, Hypothesis draws cases from schemathesis in
both modes (positive: schema-valid; negative: schema-violating) and sends them with the
token, and some positive ones without it. A response is a finding when its status is ≥ 500,
or when a 4xx body is not the typed ``ErrorBody``. Used by ``tests/services/test_api_fuzz.py``
(bounded) and ``bench/fuzz.py`` (longer).
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hypothesis
import hypothesis.errors
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from shared.schemas import ErrorBody
from tests.support import serve_app

TOKEN = "fuzz-token-0123456789abcdef"
VOCAB = ["Question: 2+3=?\nAnswer: 2+3=5\n#### 5", "Question: 7*6=?\n7*6=42\n#### 42"]


class _OutOfTime(Exception):
    pass


@dataclass
class Api:
    name: str
    base_url: str
    headers: dict[str, str]


@dataclass
class FuzzReport:
    """What one service's run saw: calls per operation and status, and every finding."""

    name: str
    calls: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)  # ≥ 500
    untyped: list[str] = field(default_factory=list)  # 4xx whose body is not an ErrorBody
    seconds: float = 0.0


@contextlib.contextmanager
def fuzz_stack(tmp: Path) -> Iterator[list[Api]]:
    """Reward + rollout on loopback (real uvicorn), rollout on an EOS-first tiny model."""
    from services.reward.app import create_app as reward_app
    from services.reward.settings import RewardSettings
    from services.rollout.app import create_app as rollout_app
    from services.rollout.settings import RolloutSettings
    from tests.services.rollout.tiny import EOS, make_fixed_next_token_model_dir

    model = make_fixed_next_token_model_dir(
        tmp / "eos-model", vocab_texts=VOCAB, probs={EOS: 0.9, "7": 0.1}
    )
    (tmp / "ckpt").mkdir(exist_ok=True)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with contextlib.ExitStack() as stack:
        reward = stack.enter_context(
            serve_app(reward_app(RewardSettings(workers=1, api_token=TOKEN, require_token=True)))
        )
        rollout = stack.enter_context(
            serve_app(
                rollout_app(
                    RolloutSettings(
                        model_dir=model,
                        checkpoint_root=tmp / "ckpt",
                        api_token=TOKEN,
                        require_token=True,
                        reward_url=reward,
                        reward_api_token=TOKEN,
                        max_items=8,
                        max_k=8,
                        max_weights_bytes=1 << 20,
                    )
                )
            )
        )
        yield [Api("reward", reward, auth), Api("rollout", rollout, auth)]


def fuzz_api(api: Api, *, max_examples: int, budget_s: float, seed: int | None = 0) -> FuzzReport:
    """Fuzz every operation of ``api``: ≤ ``max_examples`` cases per operation and mode,
    stopping early once ``budget_s`` seconds are spent on this service."""
    import schemathesis
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_url(f"{api.base_url}/openapi.json")
    report = FuzzReport(api.name)
    t0 = time.monotonic()
    ops = sorted((r.ok() for r in schema.get_all_operations()), key=lambda op: op.method == "post")
    pairs = [(op, mode) for op in ops for mode in GenerationMode]  # positive, negative
    for i, (op, mode) in enumerate(pairs):
        # an equal share of what is left (GETs first: without parameters, one call each)
        deadline = time.monotonic() + (t0 + budget_s - time.monotonic()) / (len(pairs) - i)
        _fuzz_operation(api, op, mode, deadline, max_examples, seed, report)
    report.seconds = time.monotonic() - t0
    return report


def _fuzz_operation(
    api: Api,
    op: Any,
    mode: Any,
    deadline: float,
    max_examples: int,
    seed: int | None,
    report: FuzzReport,
) -> None:
    from schemathesis import Case, GenerationMode

    label = f"{op.method.upper()} {op.path}"

    @settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        print_blob=False,
        suppress_health_check=list(HealthCheck),
    )
    @hypothesis.given(case=op.as_strategy(generation_mode=mode), anon=st.booleans())
    @hypothesis.seed(seed if seed is not None else time.time_ns())
    def one(case: Case, anon: bool) -> None:
        if time.monotonic() > deadline:
            raise _OutOfTime  # this operation's share of the budget is spent
        # a positive case sometimes goes without the token (must be a typed 401)
        headers = {} if anon and mode == GenerationMode.POSITIVE else api.headers
        _record(report, label, case, case.call(base_url=api.base_url, headers=headers, timeout=60))

    # Unsatisfiable: nothing to violate (a GET without parameters has no negative case)
    with contextlib.suppress(hypothesis.errors.Unsatisfiable, _OutOfTime):
        one()


def _record(report: FuzzReport, label: str, case: object, response: object) -> None:
    status = int(response.status_code)  # type: ignore[attr-defined]
    report.calls[label] += 1
    report.statuses[status] += 1
    body = response.text  # type: ignore[attr-defined]
    what = f"{label} -> {status}: {body[:300]!r} for {_describe(case)}"
    if status >= 500 and not (status == 503 and label == "GET /readyz"):
        report.server_errors.append(what)  # /readyz answers 503 by design when not ready
    if status >= 400:
        try:
            ErrorBody.model_validate_json(body)
        except ValidationError:
            report.untyped.append(what)


def _describe(case: object) -> str:
    body = getattr(case, "body", None)
    text = repr(body)
    return text if len(text) < 300 else text[:300] + "..."
