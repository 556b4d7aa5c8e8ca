"""Generalized advantage estimation (Schulman et al. 2016) for the PPO baseline's value network.

One response at a time, token-level: token t's state s_t is the prompt plus the response tokens before t, and
`values[t]` = V(s_t). The token reward is 0 except the task reward R on the last response token (PAPER-NOTES 2.5:
the reward sits on the EOS), and V after the last token is 0. The KL penalty is not in the reward: it is a loss
term (vineppo.losses), as in the paper (PAPER-NOTES 3.5). The paper uses gamma = lambda = 1, where the advantage
is simply R - V(s_t).
"""

from __future__ import annotations

import torch


def outcome_rewards(num_tokens: int, reward: float) -> torch.Tensor:
    """Token rewards of one response: zeros with `reward` on the last token."""
    rewards = torch.zeros(num_tokens)
    rewards[-1] = reward
    return rewards


def gae(
    rewards: torch.Tensor, values: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns) of one response; 1-D tensors with one entry per response token.

    delta_t = r_t + gamma V(s_{t+1}) - V(s_t), A_t = delta_t + gamma lam A_{t+1}, computed backwards with
    V(s_T) = 0 and A_T = 0. The returns, the value network's targets, are A_t + V(s_t) (as in the paper).
    """
    advantages = torch.zeros_like(values)
    next_value, next_advantage = 0.0, 0.0
    for t in reversed(range(len(values))):
        delta = rewards[t] + gamma * next_value - values[t]
        next_advantage = delta + gamma * lam * next_advantage
        advantages[t] = next_advantage
        next_value = values[t]
    return advantages, advantages + values
