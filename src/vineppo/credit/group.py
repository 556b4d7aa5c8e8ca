"""Group baselines (GRPO, RLOO): one advantage per episode from the rewards of the samples of the same prompt.

The paper compares VinePPO with GRPO and RLOO, but their settings are not known (PAPER-NOTES 2.12: group size and
all other settings not found; that code was not released). What we choose, and why:
- the group is the `samples_per_prompt` responses to one prompt of the iteration (`Episode.prompt_index`);
- the episode's advantage goes to every one of its response tokens (outcome supervision, no per-step credit);
- everything else is the VinePPO run unchanged (the same sampling, the same PPO-clip + KL update), except that
  the advantages are not whitened across the batch by default (the `whitens` of their rows in vineppo.algorithms): neither paper does, and
  whitening would give a group whose rewards are all equal, advantage 0, -mean/std on every token.
"""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING, Callable, Sequence

from vineppo.episodes import Episode, group_by_prompt

if TYPE_CHECKING:
    from vineppo.context import Context

GroupEstimator = Callable[[Sequence[float]], list[float]]


def grpo_advantages(rewards: Sequence[float], eps: float = 1e-6) -> list[float]:
    """(r - mean) / (std + eps) over the group, with the unbiased (n - 1) std.

    The unbiased std is what `torch.std` gives, as used by GRPO's common implementation (TRL's GRPOTrainer,
    which adds eps = 1e-4); DeepSeekMath's formula does not say which. A group whose rewards are all equal
    (a single sample included, whose unbiased std is undefined) carries no signal and gets exactly 0, not
    rounding noise divided by eps.
    """
    if len(set(rewards)) <= 1:
        return [0.0] * len(rewards)
    mean, std = statistics.fmean(rewards), statistics.stdev(rewards)
    return [(r - mean) / (std + eps) for r in rewards]


def leave_one_out_means(rewards: Sequence[float]) -> list[float]:
    """For each reward, the mean of the other n - 1 (n >= 2): a baseline that does not depend on the sample."""
    total = sum(rewards)
    return [(total - r) / (len(rewards) - 1) for r in rewards]


def rloo_advantages(rewards: Sequence[float]) -> list[float]:
    """r_i minus the mean of the other n - 1 rewards (REINFORCE leave-one-out, Ahmadian et al. 2024).

    The baseline does not depend on r_i, so the estimate stays unbiased. A single sample has no other sample to
    compare with and gets 0; so does a group whose rewards are all equal (exactly, not up to float rounding).
    """
    if len(set(rewards)) <= 1:
        return [0.0] * len(rewards)
    return [r - baseline for r, baseline in zip(rewards, leave_one_out_means(rewards))]


def group_credit(episodes: list[Episode], estimator: GroupEstimator) -> dict[str, float]:
    """Fill `advantages`, `step_starts` and `step_values` of every episode from its group's rewards; return the
    number of groups (`value/states`) and the share whose rewards are all equal (every advantage 0, no signal).

    Episodes are grouped by `prompt_index`, in any order. The whole response is one step (`step_starts = [0]`)
    whose value is the group's mean reward, so the `value/*` metrics report the group baselines. (RLOO's
    baseline is the leave-one-out mean; its advantage is n/(n-1) times r - group mean, so the group mean
    is the shared part of it.)
    """
    groups = group_by_prompt(episodes)
    equal = 0
    for group in groups:
        rewards = [e.reward for e in group]
        equal += len(set(rewards)) == 1
        baseline = statistics.fmean(rewards)
        for episode, advantage in zip(group, estimator(rewards)):
            episode.advantages = [advantage] * len(episode.response_ids)
            episode.step_starts = [0]
            episode.step_values = [baseline]
    return {"value/states": len(groups), "value/equal_reward_groups": equal / len(groups)}


def grpo_credit(episodes: list[Episode], ctx: Context) -> dict[str, float]:
    return group_credit(episodes, grpo_advantages)


def rloo_credit(episodes: list[Episode], ctx: Context) -> dict[str, float]:
    return group_credit(episodes, rloo_advantages)
