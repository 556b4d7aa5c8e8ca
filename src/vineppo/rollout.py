"""Sampling from states and grading what comes out: the one path by which the policy's samples, VinePPO's MC
rollouts, the evaluations and the value analysis reach the engine and the grader.

A state is a prompt plus the first tokens of a response (none for the bare prompt; a step boundary for the MC
estimator and the value analysis). A rollout from it may add `max_new_tokens` minus the response tokens it already
holds: the same length limit as a response sampled from the bare prompt, so truncation (reward 0) happens exactly
where it would have. The grader sees the state's response tokens plus the rollout's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import torch

from vineppo.engine.base import Completion, Engine, ProgressCallback, SamplingParams
from vineppo.episodes import Episode, grade_responses
from vineppo.tasks.base import Grade, Problem, Task

if TYPE_CHECKING:
    from vineppo.context import Context


@dataclass(frozen=True)
class State:
    problem: Problem
    prompt_ids: list[int]
    response_ids: list[int]  # the response tokens before the state's step boundary; [] for the bare prompt
    step: int = 0  # how many steps `response_ids` holds

    @property
    def tokens(self) -> list[int]:
        return self.prompt_ids + self.response_ids


@dataclass(frozen=True)
class Rollout:
    """One completion sampled from a state, graded as the state's response followed by the completion."""

    completion: Completion
    grade: Grade

    @property
    def reward(self) -> float:
        return self.grade.reward


def rollout(
    engine: Engine,
    task: Task,
    decode: Callable[[list[int]], str],
    states: Sequence[State],
    n: int | Sequence[int],
    params: SamplingParams,
    generator: torch.Generator | None = None,
    on_progress: ProgressCallback | None = None,
) -> list[list[Rollout]]:
    """`n` graded rollouts of every state (or `n[i]` of state i), in one engine call and one grading call (which
    keeps the GSM8K and MATH graders' worker processes busy)."""
    budgets = [params.max_new_tokens - len(s.response_ids) for s in states]
    completions = engine.generate(
        [s.tokens for s in states], n, params, generator=generator, on_progress=on_progress, budgets=budgets
    )
    flat = [(s, c) for s, group in zip(states, completions) for c in group]
    grades = grade_responses(
        task, [s.problem for s, _ in flat], [decode(s.response_ids + c.token_ids) for s, c in flat],
        [c.finish_reason for _, c in flat],
    )
    graded = iter(Rollout(c, g) for (_, c), g in zip(flat, grades))
    return [[next(graded) for _ in group] for group in completions]


def sample_episodes(
    ctx: Context, problems: Sequence[Problem], n: int, encode: Callable[[str], list[int]],
    on_progress: ProgressCallback | None = None,
) -> list[Episode]:
    """`n` graded responses of the current policy to each problem, as episodes (`prompt_index`: the problem's
    position in `problems`, the group of the group baselines)."""
    states = [State(p, encode(p.prompt), []) for p in problems]
    groups = rollout(ctx.engine, ctx.task, ctx.decode, states, n, ctx.sampling, ctx.generator, on_progress)
    return [
        Episode(
            prompt_index=index, problem=state.problem, prompt_ids=state.prompt_ids,
            response_ids=r.completion.token_ids, sample_logprobs=r.completion.logprobs,
            finish_reason=r.completion.finish_reason, reward=r.reward, parsed=r.grade.parsed,
        )
        for index, (state, group) in enumerate(zip(states, groups))
        for r in group
    ]
