"""Supervised finetuning on gold solutions (`train.run_sft`, ``vineppo sft``) and its config
(`config.SFTConfig`): makes π_ref for the RL runs and the demo.
"""
