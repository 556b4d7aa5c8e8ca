"""The Episode record that flows through the loop, and its collation into padded token tensors."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field, fields, is_dataclass, replace

import torch

from vineppo.tasks.base import CORRECT, Grade, Problem, Task


@dataclass
class Episode:
    """One sampled response to one problem, filled in stage by stage.

    prompt_index: position of the problem in this iteration's prompt list (the group id for group baselines).
    step_starts: token offsets of the reasoning steps in the response (vineppo.steps.split_steps).
    step_values: the value estimate at each step boundary s_0 .. s_{n-1} (MC mean for VinePPO).
    advantages: one per response token.
    rollout: an MC rollout trained on as an episode of its own (algo.vineppo.train_rollouts), not one of the
        policy's samples; its `prompt_ids` hold the prompt and the response tokens of the state it continues.
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
    rollout: bool = False


def group_by_prompt(episodes: list[Episode]) -> list[list[Episode]]:
    """The episodes of each prompt (`Episode.prompt_index`), in order of first appearance; any input order."""
    groups: dict[int, list[Episode]] = defaultdict(list)
    for episode in episodes:
        groups[episode.prompt_index].append(episode)
    return list(groups.values())


def sample_metrics(episodes: list[Episode]) -> dict[str, float]:
    """What the policy's samples of an iteration were: reward, accuracy, unparsed and truncated shares, length."""
    rewards = torch.tensor([e.reward for e in episodes])
    policy_tokens = sum(len(e.response_ids) for e in episodes)
    return {
        "train/reward": rewards.mean().item(),
        "train/accuracy": (rewards >= CORRECT).float().mean().item(),
        "train/unparsed": sum(not e.parsed for e in episodes) / len(episodes),
        "train/truncated": sum(e.finish_reason == "length" for e in episodes) / len(episodes),
        "train/response_tokens": policy_tokens / len(episodes),
        "train/all_rewards_equal": float(bool((rewards == rewards[0]).all())),
        "tokens/policy": policy_tokens,
    }


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


def split_rows(batch) -> list:
    """One batch per row of `batch`: a dataclass whose fields are [B, ...] tensors or such dataclasses (a
    TokenBatch and what rides along with it), each row trimmed to its own length (its attention mask's count of
    tokens; per-token tensors, which have one column fewer, one shorter; a nested dataclass by its own mask).
    `join_rows` puts rows back together."""
    return [_row(batch, i) for i in range(len(_first_tensor(batch)))]


def _first_tensor(batch) -> torch.Tensor:
    value = getattr(batch, fields(batch)[0].name)
    return _first_tensor(value) if is_dataclass(value) else value


def row_tokens(row) -> int:
    """The tokens of a row of `split_rows` (of all its TokenBatches: both responses of a DPO+ pair)."""
    if isinstance(row, TokenBatch):
        return int(row.attention_mask.sum())
    return sum(row_tokens(getattr(row, f.name)) for f in fields(row) if is_dataclass(getattr(row, f.name)))


def join_rows(batches: list):
    """Batches of one type (rows of `split_rows`, or whole batches) stacked into one, each right-padded with 0 to
    the longest: padding is masked out (attention mask, response mask) wherever it could matter."""
    first = batches[0]
    return replace(first, **{
        f.name: (join_rows([getattr(b, f.name) for b in batches]) if is_dataclass(getattr(first, f.name))
                 else _pad_cat([getattr(b, f.name) for b in batches]))
        for f in fields(first)
    })


def _attention(batch) -> torch.Tensor:
    if isinstance(batch, TokenBatch):
        return batch.attention_mask
    return next(_attention(getattr(batch, f.name)) for f in fields(batch) if is_dataclass(getattr(batch, f.name)))


def _row(batch, i: int):
    values, attention = {}, None
    for f in fields(batch):
        value = getattr(batch, f.name)
        if is_dataclass(value):
            values[f.name] = _row(value, i)
        elif value.dim() == 1:
            values[f.name] = value[i : i + 1]
        else:  # [B, T] or [B, T-1], aligned with this batch's tokens
            attention = _attention(batch) if attention is None else attention
            length = int(attention[i].sum())
            values[f.name] = value[i : i + 1, : length - (attention.shape[1] - value.shape[1])]
    return replace(batch, **values)


def _pad_cat(tensors: list[torch.Tensor]) -> torch.Tensor:
    if tensors[0].dim() == 1:
        return torch.cat(tensors)
    width = max(t.shape[1] for t in tensors)
    return torch.cat([torch.nn.functional.pad(t, (0, width - t.shape[1])) for t in tensors])
