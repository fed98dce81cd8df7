"""Fixtures of the deploy tests: a Helm binary and the chart rendered with its defaults."""

from __future__ import annotations

from typing import Any

import pytest

from tests.deploy.manifests import helm_binary, render

TOKEN = "api-token-for-tests"


@pytest.fixture(scope="session")
def helm_bin() -> str:
    return helm_binary()


@pytest.fixture(scope="session")
def rendered(helm_bin: str) -> list[dict[str, Any]]:
    """The chart rendered with its default values (plus the one value it requires)."""
    return render(helm_bin, f"apiToken.value={TOKEN}")
