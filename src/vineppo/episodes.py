"""The Episode record that flows through the loop, and its collation into padded token tensors."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch

from vineppo.tasks.base import Grade, Problem, Task


@dataclass
class Episode:
    """One sampled response to one problem, filled in stage by stage.

    prompt_index: position of the problem in this iteration's prompt list (the group id for group baselines).
    step_starts: token offsets of the reasoning steps in the response (vineppo.steps.split_steps).
    step_values: the value estimate at each step boundary s_0 .. s_{n-1} (MC mean for VinePPO).
    advantages: one per response token.
    """

    prompt_index: int
    problem: Problem
    prompt_ids: list[int]
    response_ids: list[int]
    sample_logprobs: list[float]
    finish_reason: str
    reward: float = 0.0
    parsed: bool = False
    step_starts: list[int] = field(default_factory=list)
    step_values: list[float] = field(default_factory=list)
    advantages: list[float] = field(default_factory=list)


def group_by_prompt(episodes: list[Episode]) -> list[list[Episode]]:
    """The episodes of each prompt (`Episode.prompt_index`), in order of first appearance; any input order."""
    groups: dict[int, list[Episode]] = defaultdict(list)
    for episode in episodes:
        groups[episode.prompt_index].append(episode)
    return list(groups.values())


def grade_responses(
    task: Task, problems: list[Problem], texts: list[str], finish_reasons: list[str]
) -> list[Grade]:
    """The task's grades, in one call of its `grade_batch` (which keeps the GSM8K and MATH graders' worker
    processes busy), except that a response cut off at the length limit earns 0 (the paper's unfinished penalty,
    PAPER-NOTES 2.9). Used for policy rollouts, MC rollouts and evaluation alike."""
    grades = task.grade_batch(problems, texts)
    return [Grade(0.0, g.parsed) if reason == "length" else g for g, reason in zip(grades, finish_reasons)]


@dataclass
class TokenBatch:
    """Episodes as right-padded tensors. Per-token tensors are aligned with the *predictions* of a causal LM:
    position j holds the quantity of token j + 1 of `input_ids`, so they have one column fewer."""

    input_ids: torch.Tensor  # [B, T]
    attention_mask: torch.Tensor  # [B, T]
    response_mask: torch.Tensor  # [B, T-1] 1.0 where the predicted token is a response token
    advantages: torch.Tensor  # [B, T-1]
    sample_logprobs: torch.Tensor  # [B, T-1] the sampler's log-probs of the response tokens

    def to(self, device: torch.device) -> "TokenBatch":
        return TokenBatch(**{name: value.to(device) for name, value in vars(self).items()})


def collate(episodes: list[Episode], pad_id: int) -> TokenBatch:
    lengths = [len(e.prompt_ids) + len(e.response_ids) for e in episodes]
    width = max(lengths)
    batch = len(episodes)
    input_ids = torch.full((batch, width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((batch, width), dtype=torch.long)
    response_mask = torch.zeros((batch, width - 1))
    advantages = torch.zeros((batch, width - 1))
    sample_logprobs = torch.zeros((batch, width - 1))
    for row, (episode, length) in enumerate(zip(episodes, lengths)):
        input_ids[row, :length] = torch.tensor(episode.prompt_ids + episode.response_ids)
        attention_mask[row, :length] = 1
        response = slice(len(episode.prompt_ids) - 1, length - 1)  # prediction positions of the response tokens
        response_mask[row, response] = 1.0
        sample_logprobs[row, response] = torch.tensor(episode.sample_logprobs)
        if episode.advantages:
            advantages[row, response] = torch.tensor(episode.advantages)
    return TokenBatch(input_ids, attention_mask, response_mask, advantages, sample_logprobs)
