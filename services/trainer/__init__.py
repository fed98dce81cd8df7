"""The trainer service: RL finetuning through the rollout and reward services.

Rooms, from the bottom up (each imports only lower rows; docs/architecture.md draws them,
tests/test_architecture.py checks them):

- ``algos``: pure math (advantage estimators, losses, state plans); ``config``: `RunConfig`;
  ``settings``: `TrainerSettings` (``VINEPPO_TRAINER_*``);
- ``runtime``: models, DeepSpeed, checkpoints, memory, GGUF import, logging;
  ``data``: the seeded prompt order, episodes and padded batches;
- ``client``: queue jobs, weight push, where the services are, starting them on loopback;
- ``evaluation``: Pass@1, runs and checkpoint selection, value analysis, the HTML report;
  ``sft``: supervised finetuning (π_ref);
- ``rl``: the RL loop and PPO epochs; ``baselines``: RestEM and DPO-Positive;
- ``cli``: the ``vineppo`` subcommands, thin.
"""
