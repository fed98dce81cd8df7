"""The built-in demo (``vineppo demo``, ``make demo``): a client of the services like any user
script. It drives the trainer's public pieces (SFT, the RL loop, evaluation, the report) and
starts the reward and rollout services on loopback; nothing in the trainer imports it.

- `run`: the pipeline (SFT model, PPO and VinePPO runs, test Pass@1, value MAE, report);
- `cli`: the command.
"""
