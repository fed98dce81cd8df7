"""Trainer settings refuse a short API token at start-up, as the rollout and reward do."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.trainer.settings import TrainerSettings


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
