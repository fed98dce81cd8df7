"""What the trainer trains on: the seeded order of training prompts (`order.DataOrder`) and
sampled responses turned into episodes and padded batches (`episodes`).
"""
