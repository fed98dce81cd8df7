"""The rollout REST API on a real uvicorn server, graded by the real reward service."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from services.rollout.app import create_app
from services.rollout.settings import RolloutSettings
from shared.schemas import ErrorBody, GenerateResult, RolloutHealth, ValueResult
from tests.services.rollout.conftest import PROMPT, SOLUTION
from tests.services.rollout.tiny import save_weights
from tests.support import serve_app

pytestmark = pytest.mark.server
TOKEN = "s3cret-token-of-24-chars"
SAMPLING = {"temperature": 0.5, "max_tokens": 48, "seed": 1}


def _settings(model_dir: Path, root: Path, reward_url: str) -> RolloutSettings:
    return RolloutSettings(
        model_dir=model_dir,
        checkpoint_root=root,
        api_token=TOKEN,
        reward_url=reward_url,
        max_batch=64,
    )


@pytest.fixture(scope="module")
def rollout_url(
    trained_model_dir: Path, reward_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    root = tmp_path_factory.mktemp("ckpt")
    with serve_app(create_app(_settings(trained_model_dir, root, reward_url))) as url:
        yield url


def _error(resp: httpx.Response, status: int) -> ErrorBody:
    assert resp.status_code == status, resp.text
    return ErrorBody.model_validate(resp.json())


def test_value_is_one_for_the_gold_it_writes_and_zero_otherwise(rollout_url: str) -> None:
    items = [
        {"prompt": PROMPT, "partial_response": "", "gold": "7"},
        {"prompt": PROMPT, "partial_response": "Tom starts with 3 apples.\n", "gold": "7"},
        {"prompt": PROMPT, "partial_response": "", "gold": "9"},
    ]
    body = {"items": items, "k": 8, "sampling": SAMPLING}
    resp = httpx.post(f"{rollout_url}/v1/value", json=body, timeout=120)
    result = ValueResult.model_validate(resp.json())
    assert [v.value for v in result.values] == [1.0, 1.0, 0.0]
    assert result.values[0].returns == [1.0] * 8 and result.values[0].verdicts == ["correct"] * 8
    assert set(result.values[2].verdicts) == {"incorrect"}
    assert result.policy_version == 0


def test_values_for_100_mixed_states_in_one_call(rollout_url: str) -> None:
    cuts = [i for i, ch in enumerate(SOLUTION) if ch in "\n ."] + [0]
    items = []
    for i in range(100):
        cut = cuts[i % len(cuts)]
        items.append(
            {
                "prompt": PROMPT if i % 7 else "Question: what is 12 * 3?\nAnswer:\n",
                "partial_response": SOLUTION[: cut + 1] if i % 5 else SOLUTION,
                "gold": ["7", "9", "36"][i % 3],
                "dataset": "math" if i % 11 == 0 else "gsm8k",
            }
        )
    body = {"items": items, "k": 2, "sampling": SAMPLING}
    resp = httpx.post(f"{rollout_url}/v1/value", json=body, timeout=120)
    result = ValueResult.model_validate(resp.json())
    assert len(result.values) == 100
    for item, v in zip(items, result.values, strict=True):
        assert 0.0 <= v.value <= 1.0
        if item["partial_response"] == SOLUTION and item["dataset"] == "gsm8k":
            assert v.terminal and v.value == (1.0 if item["gold"] == "7" else 0.0)
        else:
            assert not v.terminal and len(v.returns) == 2


def test_generate_healthz_metrics(rollout_url: str) -> None:
    body = {"prompts": [PROMPT, PROMPT], "n": 3, "sampling": SAMPLING}
    result = GenerateResult.model_validate(
        httpx.post(f"{rollout_url}/v1/generate", json=body).json()
    )
    assert [len(per) for per in result.outputs] == [3, 3]
    assert result.outputs[0][0].text.endswith("#### 7\n")
    health = RolloutHealth.model_validate(httpx.get(f"{rollout_url}/healthz").json())
    assert health.state == "ready"
    assert health.model == "model" and health.version == 0
    metrics = httpx.get(f"{rollout_url}/metrics").text
    for name in ("rollout_tokens_per_second", "rollout_requests_total", "rollout_queue_depth"):
        assert name in metrics
    tps = next(ln for ln in metrics.splitlines() if ln.startswith("rollout_tokens_per_second "))
    assert float(tps.split()[1]) > 0


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/v1/value", {"items": [{"prompt": "Q", "gold": "1"}], "k": 0}, 422),  # k too small
        ("/v1/value", {"items": [], "k": 4}, 422),  # empty batch
        ("/v1/value", {"items": [{"prompt": "Q", "gold": "1", "dataset": "aime"}]}, 422),
        ("/v1/generate", {"prompts": []}, 422),  # empty batch
        ("/v1/generate", {"prompts": ["Tom " * 400], "sampling": {"max_tokens": 8}}, 400),
        ("/v1/value", "not json", 422),
    ],
)
def test_bad_requests_get_typed_4xx(rollout_url: str, path: str, body: object, status: int) -> None:
    kw = {"content": body} if isinstance(body, str) else {"json": body}
    err = _error(httpx.post(f"{rollout_url}{path}", **kw), status)  # type: ignore[arg-type]
    if status == 400:
        assert err.error == "prompt_too_long"


def test_value_of_a_state_longer_than_the_context_is_zero_not_an_error(rollout_url: str) -> None:
    items = [{"prompt": "Tom " * 400, "gold": "1"}, {"prompt": PROMPT, "gold": "7"}]
    body = {"items": items, "k": 2, "sampling": SAMPLING}
    resp = httpx.post(f"{rollout_url}/v1/value", json=body, timeout=120)
    assert resp.status_code == 200, resp.text
    result = ValueResult.model_validate(resp.json())
    long, fine = result.values
    assert long.out_of_budget and long.value == 0.0 and long.verdicts == ["truncated"]
    assert long.num_tokens == 0
    assert not fine.out_of_budget and fine.value == 1.0


def test_weights_push_changes_outputs_and_refuses_bad_requests(
    tiny_model_dir: Path, reward_url: str, tmp_path: Path
) -> None:
    root = tmp_path / "ckpt"
    save_weights(tiny_model_dir, root / "policy-v1", seed=42)
    (root / "bad").mkdir()
    (root / "bad" / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    save_weights(tiny_model_dir, tmp_path / "outside", seed=43)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    gen = {"prompts": [PROMPT], "sampling": {"temperature": 0.0, "max_tokens": 12}}
    with serve_app(create_app(_settings(tiny_model_dir, root, reward_url))) as url:
        before = httpx.post(f"{url}/v1/generate", json=gen).json()["outputs"]
        push = {"version": 1, "path": "policy-v1"}
        _error(httpx.post(f"{url}/v1/weights", json=push), 401)  # no token
        _error(
            httpx.post(f"{url}/v1/weights", json=push, headers={"Authorization": "Bearer x"}), 401
        )
        bad = {"version": 1, "path": "bad/pytorch_model.bin"}
        assert _error(httpx.post(f"{url}/v1/weights", json=bad, headers=auth), 415).error == (
            "unsupported_weights_format"
        )
        out = {"version": 1, "path": str(tmp_path / "outside")}
        _error(httpx.post(f"{url}/v1/weights", json=out, headers=auth), 403)
        _error(
            httpx.post(f"{url}/v1/weights", json={**push, "path": "../outside"}, headers=auth), 403
        )
        wrong = {**push, "sha256": {"model.safetensors": "0" * 64}}
        resp = httpx.post(f"{url}/v1/weights", json=wrong, headers=auth, timeout=60)
        assert _error(resp, 409).error == "digest_mismatch"
        assert httpx.get(f"{url}/healthz").json()["version"] == 0  # nothing was loaded
        resp = httpx.post(f"{url}/v1/weights", json=push, headers=auth, timeout=60)
        assert resp.status_code == 200 and resp.json()["version"] == 1
        after = httpx.post(f"{url}/v1/generate", json=gen).json()
        assert after["policy_version"] == 1
        assert after["outputs"][0][0]["token_ids"] != before[0][0]["token_ids"]
        assert httpx.get(f"{url}/healthz").json()["version"] == 1
        older = {"version": 0, "path": "policy-v1"}  # never go back to an older policy
        resp = httpx.post(f"{url}/v1/weights", json=older, headers=auth, timeout=60)
        assert _error(resp, 409).error == "stale_version"


def test_weights_refused_when_no_token_configured(tiny_model_dir: Path, tmp_path: Path) -> None:
    settings = RolloutSettings(model_dir=tiny_model_dir, checkpoint_root=tmp_path)
    with serve_app(create_app(settings, grader=None)) as url:
        body = {"version": 1, "path": "x"}
        resp = httpx.post(f"{url}/v1/weights", json=body, headers={"Authorization": "Bearer x"})
        assert _error(resp, 403).message.startswith("weight pushes are disabled")


def test_event_loop_answers_while_the_engine_works(tiny_model_dir: Path, tmp_path: Path) -> None:
    import threading

    settings = RolloutSettings(model_dir=tiny_model_dir, checkpoint_root=tmp_path)
    long_gen = {"prompts": ["Tom"], "n": 128, "sampling": {"temperature": 1.0, "max_tokens": 240}}
    with serve_app(create_app(settings)) as url:
        worker = threading.Thread(
            target=lambda: httpx.post(f"{url}/v1/generate", json=long_gen, timeout=300)
        )
        worker.start()
        seen_busy = False
        while worker.is_alive() and not seen_busy:
            metrics = httpx.get(f"{url}/metrics", timeout=5).text
            seen_busy = "rollout_queue_depth 1.0" in metrics and worker.is_alive()
        assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
        answered_during_generation = worker.is_alive()
        worker.join()
        assert seen_busy and answered_during_generation


def test_limits_the_docs_promise_are_the_answers_given(rollout_url: str) -> None:
    """Over max_items: 413 (not the schema's 422); k/n over max_k: k_out_of_range."""
    resp = httpx.post(f"{rollout_url}/v1/generate", json={"prompts": ["Q"] * 4097}, timeout=30)
    assert _error(resp, 413).error == "payload_too_large"
    items = [{"prompt": "Q", "gold": "1"}]
    resp = httpx.post(f"{rollout_url}/v1/value", json={"items": items, "k": 257})
    assert _error(resp, 422).error == "k_out_of_range"
    resp = httpx.post(f"{rollout_url}/v1/generate", json={"prompts": ["Q"], "n": 300})
    assert _error(resp, 422).error == "k_out_of_range"
    for stop in (["x" * 257], [""], ["a"] * 17):  # stop strings: bounded in number and length
        body = {"prompts": ["Q"], "sampling": {"stop": stop, "max_tokens": 4}}
        resp = httpx.post(f"{rollout_url}/v1/generate", json=body)
        assert _error(resp, 422).error == "validation_error"


@pytest.mark.parametrize("token", ["", "short", "has spaces in the token"])
def test_empty_or_short_token_is_refused_at_start_up(
    token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pydantic import ValidationError

    monkeypatch.setenv("VINEPPO_ROLLOUT_API_TOKEN", token)
    with pytest.raises(ValidationError, match="api_token") as info:
        RolloutSettings()
    assert token not in str(info.value) or not token  # the value itself is never echoed
    with pytest.raises(ValidationError, match="require_token needs api_token"):
        RolloutSettings(require_token=True, _env_file=None, api_token=None)


def test_optional_bearer_auth_on_generate_and_value(
    tiny_model_dir: Path, reward_url: str, tmp_path: Path
) -> None:
    settings = _settings(tiny_model_dir, tmp_path, reward_url).model_copy(
        update={"require_token": True}
    )
    gen = {"prompts": ["Tom"], "sampling": {"temperature": 0.0, "max_tokens": 4}}
    val = {"items": [{"prompt": "Tom", "gold": "1"}], "k": 1, "sampling": gen["sampling"]}
    with serve_app(create_app(settings)) as url:
        for path, body in (("/v1/generate", gen), ("/v1/value", val)):
            _error(httpx.post(f"{url}{path}", json=body), 401)
            empty = {"Authorization": "Bearer"}  # nothing after the scheme
            _error(httpx.post(f"{url}{path}", json=body, headers=empty), 401)
            auth = {"Authorization": f"Bearer {TOKEN}"}
            assert httpx.post(f"{url}{path}", json=body, headers=auth, timeout=60).is_success
    with serve_app(create_app(_settings(tiny_model_dir, tmp_path, reward_url))) as url:
        assert httpx.post(f"{url}/v1/generate", json=gen, timeout=60).is_success  # off: open


def test_readyz_fails_while_loading_not_after_refused_weights(
    tiny_model_dir: Path, reward_url: str, tmp_path: Path
) -> None:
    import threading

    from safetensors.torch import save_file

    from services.rollout.engine.torch_engine import TorchEngine

    root = tmp_path / "ckpt"
    save_weights(tiny_model_dir, root / "policy-v1", seed=3)
    (root / "policy-v2").mkdir()
    save_file({"not.a.weight": torch_zeros()}, root / "policy-v2" / "model.safetensors")
    save_weights(tiny_model_dir, root / "policy-v3", seed=4)
    engine = TorchEngine(tiny_model_dir)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    settings = _settings(tiny_model_dir, root, reward_url)
    with serve_app(create_app(settings, engine=engine)) as url:
        assert httpx.get(f"{url}/readyz").status_code == 200
        # 1) while weights load, not ready (the engine's lock held here keeps the load going)
        with engine._lock:
            push = threading.Thread(
                target=lambda: httpx.post(
                    f"{url}/v1/weights",
                    json={"version": 1, "path": "policy-v1"},
                    headers=auth,
                    timeout=60,
                )
            )
            push.start()
            deadline = time.monotonic() + 20
            while True:
                resp = httpx.get(f"{url}/readyz")
                if resp.status_code == 503:
                    break
                assert time.monotonic() < deadline, "never saw a not-ready answer while loading"
                time.sleep(0.02)
            assert _error(resp, 503).error == "not_ready" and "loading" in resp.json()["message"]
            assert httpx.get(f"{url}/healthz").status_code == 200  # alive all the same
        push.join()
        assert httpx.get(f"{url}/readyz").json()["version"] == 1
        # 2) refused weights (checked before anything is copied): still v1, still ready (an
        # engine failing mid-swap is the unready case: test_weight_pushes.py)
        resp = httpx.post(
            f"{url}/v1/weights", json={"version": 2, "path": "policy-v2"}, headers=auth, timeout=60
        )
        assert _error(resp, 400).error == "bad_weights"
        assert httpx.get(f"{url}/readyz").json()["version"] == 1
        resp = httpx.post(
            f"{url}/v1/weights", json={"version": 3, "path": "policy-v3"}, headers=auth, timeout=60
        )
        assert resp.status_code == 200
        assert httpx.get(f"{url}/readyz").json()["version"] == 3


def test_engine_that_cannot_load_fails_health_and_readiness(tmp_path: Path) -> None:
    from shared.serve import serve_in_thread

    empty = tmp_path / "no-model"
    empty.mkdir()
    settings = RolloutSettings(model_dir=empty, checkpoint_root=tmp_path)
    with serve_in_thread(create_app(settings, grader=None), ready=False) as url:
        deadline = time.monotonic() + 60
        while httpx.get(f"{url}/healthz").status_code != 503:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        body = httpx.get(f"{url}/healthz").json()
        assert body["state"] == "failed" and body["error"]
        resp = httpx.get(f"{url}/readyz")
        assert _error(resp, 503).error == "not_ready" and "failed" in resp.json()["message"]


def torch_zeros():  # type: ignore[no-untyped-def]
    import torch

    return torch.zeros(2)
