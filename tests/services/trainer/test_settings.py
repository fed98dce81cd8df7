"""Trainer settings: a short API token is refused at start-up (as the rollout and reward do),
and the settings `vineppo train` resolves use every ``VINEPPO_TRAINER_*`` variable compose and
the chart set (command-line options win)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import typer
from pydantic import ValidationError

from services.trainer.cli.train import _train_wiring
from services.trainer.client.wiring import RolloutUnavailable, check_rollout, resolve_wiring
from services.trainer.settings import TrainerSettings
from shared.serve import free_port


@pytest.mark.parametrize("token", ["", "short", "has a space in it!!"])
def test_short_or_empty_token_is_refused_without_echo(
    monkeypatch: pytest.MonkeyPatch, token: str
) -> None:
    monkeypatch.setenv("VINEPPO_TRAINER_API_TOKEN", token)
    with pytest.raises(ValidationError) as err:
        TrainerSettings()
    assert "api_token" in str(err.value)
    if token:
        assert token not in str(err.value)  # secrets are never echoed


def test_long_token_and_unset_token_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VINEPPO_TRAINER_API_TOKEN", raising=False)
    assert TrainerSettings().api_token is None
    monkeypatch.setenv("VINEPPO_TRAINER_API_TOKEN", "a-long-enough-token-1234")
    settings = TrainerSettings()
    assert settings.api_token is not None
    assert settings.api_token.get_secret_value() == "a-long-enough-token-1234"


# -- vineppo train reads every VINEPPO_TRAINER_* variable compose and the chart set ----------

ENV = {
    "VINEPPO_TRAINER_REDIS_URL": "redis://redis:6379/0",
    "VINEPPO_TRAINER_REDIS_PASSWORD": "p@ss/word-0123456789",
    "VINEPPO_TRAINER_REWARD_URL": "http://reward:8001",
    "VINEPPO_TRAINER_REWARD_API_TOKEN": "reward-token-0123456789",
    "VINEPPO_TRAINER_ROLLOUT_URL": "http://rollout:8002",
    "VINEPPO_TRAINER_API_TOKEN": "rollout-token-0123456789",
    "VINEPPO_TRAINER_CHECKPOINT_ROOT": "/checkpoints",
    "VINEPPO_TRAINER_LOCAL_REPLICAS": "0",
    "VINEPPO_TRAINER_ROLLOUT_TIMEOUT_S": "7",
    "VINEPPO_TRAINER_LOG_LEVEL": "warning",
}


def _clear(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("VINEPPO_TRAINER_")]:
        monkeypatch.delenv(name)


def test_train_wiring_uses_every_env_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The helper `vineppo train` calls: each variable lands where the run uses it."""
    _clear(monkeypatch)
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    w = _train_wiring(tmp_path, None, None, None, None)
    assert w.redis_url == "redis://:p%40ss%2Fword-0123456789@redis:6379/0"  # password merged
    assert w.reward_url == "http://reward:8001"
    assert w.reward_token == "reward-token-0123456789"
    assert w.rollout_url == "http://rollout:8002"
    assert w.rollout_token == "rollout-token-0123456789"
    assert w.policy_root == Path("/checkpoints")
    assert w.local_replicas == 0
    assert w.rollout_timeout_s == 7.0
    assert w.log_level == "WARNING"
    assert "0123456789" not in repr(w)  # neither token nor password in a log line


def test_options_win_and_keep_the_env_password(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _clear(monkeypatch)
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    w = _train_wiring(tmp_path, "redis://other:6380/1", "http://r2:9", tmp_path / "ck", 2)
    assert w.redis_url == "redis://:p%40ss%2Fword-0123456789@other:6380/1"
    assert (w.reward_url, w.policy_root, w.local_replicas) == ("http://r2:9", tmp_path / "ck", 2)


def test_unset_env_keeps_the_laptop_defaults(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _clear(monkeypatch)
    w = _train_wiring(tmp_path, None, None, None, None)
    assert (w.redis_url, w.reward_url, w.rollout_url) == (None, None, None)
    assert (w.reward_token, w.rollout_token) == (None, None)
    assert w.policy_root == tmp_path / "policies" and w.local_replicas == 1


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"VINEPPO_TRAINER_LOCAL_REPLICAS": "0"}, "needs a Redis queue"),
        ({"VINEPPO_TRAINER_REWARD_API_TOKEN": "short"}, "reward_api_token"),
        (
            {"VINEPPO_TRAINER_REDIS_URL": "redis://:a-0123456789@h/0",
             "VINEPPO_TRAINER_REDIS_PASSWORD": "b-0123456789"},
            "differs from redis_password",
        ),
    ],
)  # fmt: skip
def test_bad_env_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, env: dict[str, str], needle: str
) -> None:
    _clear(monkeypatch)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(typer.BadParameter) as err:
        _train_wiring(tmp_path, None, None, None, None)
    assert needle in str(err.value) and "0123456789" not in str(err.value)


def test_unreachable_rollout_fails_with_one_line(tmp_path: Path) -> None:
    w = resolve_wiring(
        TrainerSettings(rollout_url=f"http://127.0.0.1:{free_port()}", rollout_timeout_s=0.5),
        tmp_path,
    )
    with pytest.raises(RolloutUnavailable, match="not ready after"):
        check_rollout(w, poll_s=0.1)
