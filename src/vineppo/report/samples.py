"""A few episodes of every iteration, step by step with their values and advantages (samples.jsonl, written by
vineppo.runlog.RunLog.log_samples).

The trainer writes them right after credit assignment, so the advantages are the estimator's own (before the
update whitens them) and the values are what it believed at each step boundary: the MC estimate (vineppo), the
value network's prediction (ppo) or the group's mean reward (grpo, rloo): the `values` of the method's row
(vineppo.algorithms). RestEM and DPO+ assign no credit; their samples carry the reward alone.
"""

from __future__ import annotations

from typing import Callable

from vineppo.episodes import Episode
from vineppo.steps import step_spans


def episode_record(episode: Episode, decode: Callable[[list[int]], str]) -> dict:
    """The episode as text: its prompt, reward and steps, each with the value at its start and its advantage
    (the mean over its tokens: equal for every token except under PPO's token-level GAE)."""
    steps = []
    starts = episode.step_starts or [0]
    for index, (begin, end) in enumerate(step_spans(starts, len(episode.response_ids))):
        token_advantages = episode.advantages[begin:end]
        steps.append({
            "text": decode(episode.response_ids[begin:end]),
            "value": episode.step_values[index] if index < len(episode.step_values) else None,
            "advantage": sum(token_advantages) / len(token_advantages) if token_advantages else None,
        })
    return {
        "prompt": decode(episode.prompt_ids),
        "answer": episode.problem.answer,
        "reward": episode.reward,
        "finish_reason": episode.finish_reason,
        "steps": steps,
    }
