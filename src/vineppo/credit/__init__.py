"""Credit assignment: graded episodes -> one advantage per response token.

Every estimator has one signature, `credit(episodes, ctx) -> metrics`: it fills each episode's `advantages`,
`step_starts` and `step_values` (its value estimate at each step boundary, for the `value/*` metrics and the
report) and returns its own metrics. It may change the list to train on: VinePPO appends rollouts as episodes
(`Episode.rollout`, `train_rollouts`) and drops the samples it skips (`skip_agreeing_groups`). The method table
(vineppo.algorithms) names one per method:
- vine.py, "vineppo": Monte Carlo values at every step boundary, per-step TD advantages;
- group.py, "grpo", "rloo": critic-free group baselines over the samples of one prompt;
- critic.py + gae.py, "ppo": a learned value network and token-level GAE.
"""

from __future__ import annotations

import torch

from vineppo.episodes import Episode


def advantage_metrics(episodes: list[Episode]) -> dict[str, float]:
    """What any estimator filled in, described alike: the advantages' and step values' spread, steps per
    response."""
    advantages = torch.tensor([a for e in episodes for a in e.advantages] or [0.0])
    values = torch.tensor([v for e in episodes for v in e.step_values] or [0.0])
    return {
        "advantage/mean": advantages.mean().item(),
        "advantage/std": advantages.std().item() if advantages.numel() > 1 else 0.0,
        "advantage/min": advantages.min().item(),
        "advantage/max": advantages.max().item(),
        "value/mc_mean": values.mean().item(),
        "value/mc_std": values.std().item() if values.numel() > 1 else 0.0,
        "value/steps_per_response": sum(len(e.step_starts) for e in episodes) / len(episodes),
    }
