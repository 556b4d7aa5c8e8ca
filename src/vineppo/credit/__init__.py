"""Credit assignment for the PPO family: graded episodes -> one advantage per response token.

`algo.name` picks the estimator (vineppo.algorithms):
- "vineppo": Monte Carlo values at every step boundary, per-step TD advantages (credit/vine.py);
- "grpo", "rloo": critic-free group baselines over the samples of one prompt (credit/group.py);
- "ppo": a learned value network and token-level GAE (credit/gae.py, vineppo.critic).
"""
