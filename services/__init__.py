"""The three vineppo services: reward (grader), rollout (engines, MC values), trainer (RL loop)."""
