"""The RL loop (`loop.RLTrainer`: VinePPO, PPO, GRPO, RLOO) and the PPO epochs over models
(`ppo`); the math it calls lives in ``services.trainer.algos``.
"""
