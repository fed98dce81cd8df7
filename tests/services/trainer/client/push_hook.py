"""Test-only entry point: ``vineppo`` with a pause between writing a policy and announcing it.

    VINEPPO_TEST_PAUSE_BEFORE_ANNOUNCE=2:/tmp/marker \
        python -m tests.services.trainer.client.push_hook train ...

runs ``services.cli`` unchanged except that ``services.trainer.client.weights.announce`` of
version 2 first writes the marker file and then sleeps forever, so a test can ``kill -9`` the
trainer exactly after ``policy-v2/`` is complete on disk and before any replica is told about it.
``VINEPPO_TEST_PAUSE_AFTER_ANNOUNCE=<version>:<marker>`` pauses right after the announcement
instead (announced, not yet checkpointed). Nothing in the services reads these variables:
only this wrapper does.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import services.trainer.client.weights as weights
from services.cli import main

_real_announce = weights.announce


async def _announce_or_pause(queue: Any, version: int, path: Path) -> Any:
    spec = os.environ.get("VINEPPO_TEST_PAUSE_BEFORE_ANNOUNCE", "")
    pause_version, _, marker = spec.partition(":")
    if pause_version and int(pause_version) == version:
        Path(marker).write_text(str(path))
        while True:  # the test kills us here
            time.sleep(60)
    ann = await _real_announce(queue, version, path)
    spec = os.environ.get("VINEPPO_TEST_PAUSE_AFTER_ANNOUNCE", "")
    pause_version, _, marker = spec.partition(":")
    if pause_version and int(pause_version) == version:
        Path(marker).write_text(str(path))
        while True:  # the test kills us here: announced, not yet checkpointed
            time.sleep(60)
    return ann


weights.announce = _announce_or_pause  # type: ignore[assignment]

if __name__ == "__main__":
    main()
