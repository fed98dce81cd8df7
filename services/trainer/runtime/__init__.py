"""What a training process runs on: the models (tiny Llama, policy and tokenizer loading, the
PPO critic), process groups and DeepSpeed wrapping, resumable checkpoints and the memory report.

No services, no RL: the rooms above (``sft``, ``rl``, ``baselines``, ``evaluation``) build on it.
"""
