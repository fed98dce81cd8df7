"""The RL-free baselines of the paper, on the RL loop's services, metrics and checkpoints:
RestEM (`restem`), DPO-Positive (`dpo`) and what both share with the loop (`common`).

``vineppo train --algo restem|dpo_positive`` calls `run_baseline`.
"""

from __future__ import annotations

from pathlib import Path

from services.trainer.client.local_services import Services
from services.trainer.config import RunConfig


async def run_baseline(cfg: RunConfig, services: Services, *, resume: bool = False) -> Path:
    """Run ``cfg.algo`` (``restem`` or ``dpo_positive``) to completion, or continue it from its
    newest checkpoint with ``resume``; the metrics path."""
    if cfg.algo == "restem":
        from services.trainer.baselines.restem import RestEM

        return Path(await RestEM(cfg, services).run(resume=resume))
    if cfg.algo == "dpo_positive":
        from services.trainer.baselines.dpo import DPOPositive

        return Path(await DPOPositive(cfg, services).run(resume=resume))
    raise ValueError(f"{cfg.algo!r} is not a baseline run here; known: restem, dpo_positive")
