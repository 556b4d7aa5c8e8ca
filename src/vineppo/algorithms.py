"""The training methods `algo.name` picks, named without importing torch so that the config validates cheaply.

The PPO family shares sampling, the PPO-clip + KL update and everything else; its members differ only in their
credit estimator (vineppo.credit): "vineppo", "ppo", "grpo", "rloo". The other two keep the sampling and
replace the update: "restem" fine-tunes on the correct samples (vineppo.restem) and "dpo_plus" runs DPO-Positive
on correct/incorrect pairs (vineppo.preference).
"""

from typing import Literal, get_args

PPOFamily = Literal["vineppo", "ppo", "grpo", "rloo"]
AlgorithmName = Literal[PPOFamily, "restem", "dpo_plus"]
PPO_FAMILY: tuple[str, ...] = get_args(PPOFamily)
ALGORITHMS: tuple[str, ...] = get_args(AlgorithmName)

LossAggregation = Literal["token_mean", "sequence_mean"]  # vineppo.losses.token_weights
KLAggregation = Literal["token_mean", "sequence_mean", "sequence_sum"]  # vineppo.losses.token_weights
KLGradient = Literal["ratio_corrected", "plain"]  # vineppo.losses.kl_loss_terms
