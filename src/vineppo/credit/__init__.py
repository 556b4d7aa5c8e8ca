"""Credit assignment: graded episodes -> one advantage per response token. `algo.name` picks the estimator.

- "vineppo": Monte Carlo values at every step boundary, per-step TD advantages (credit/vine.py);
- "grpo", "rloo": critic-free group baselines over the samples of one prompt (credit/group.py);
- "ppo": a learned value network and token-level GAE (credit/gae.py, vineppo.critic).

This module only names them, without importing torch, so the config can validate `algo.name` cheaply.
"""

from typing import Literal, get_args

EstimatorName = Literal["vineppo", "grpo", "rloo", "ppo"]
ESTIMATORS: tuple[str, ...] = get_args(EstimatorName)
