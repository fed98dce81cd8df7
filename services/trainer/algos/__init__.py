"""Pure RL math for the trainer: advantage estimators (a registry by name) and losses.

Everything here takes tensors and returns tensors; no I/O, no models, no services.
"""

from services.trainer.algos.advantages import (
    ADV_ESTIMATORS,
    AdvantageInputs,
    compute_advantages,
    get_adv_estimator,
    register_adv_est,
)
from services.trainer.algos.states import StatePlan, plan_states, scatter_state_values

__all__ = [
    "ADV_ESTIMATORS",
    "AdvantageInputs",
    "StatePlan",
    "compute_advantages",
    "get_adv_estimator",
    "plan_states",
    "register_adv_est",
    "scatter_state_values",
]
