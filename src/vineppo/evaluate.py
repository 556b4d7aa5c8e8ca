"""Test-set evaluation of a policy on a task: greedy accuracy, and from k samples per problem pass@1, pass@k and
majority@k, overall and per subject / level where the problems carry them (MATH).

The paper reports the mean correctness of 16 samples per problem at T = 0.35 (pass@1, PAPER-NOTES 1.2); the
training loop tracks greedy accuracy, which needs one response per problem.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Callable

import torch

from vineppo.engine.base import Engine, SamplingParams
from vineppo.rollout import Rollout, State, rollout
from vineppo.tasks.base import CORRECT, Problem, Task

BREAKDOWN_FIELDS = ("subject", "level")


def greedy_rollouts(
    engine: Engine,
    encode: Callable[[str], list[int]],
    decode: Callable[[list[int]], str],
    task: Task,
    problems: list[Problem],
    max_new_tokens: int,
    on_progress: Callable[[int], None] | None = None,
) -> list[Rollout]:
    """The greedy response to every problem, graded."""
    params = SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens, stop=task.stop_sequences)
    states = [State(p, encode(p.prompt), []) for p in problems]
    return [r for (r,) in rollout(engine, task, decode, states, 1, params, on_progress=on_progress)]


def greedy_metrics(greedy: list[Rollout]) -> dict[str, float]:
    """Accuracy (mean reward of the greedy responses, `greedy_rollouts`), the fraction with no parseable answer,
    and the fraction cut off at the length limit."""
    count = max(len(greedy), 1)
    return {
        "eval/accuracy": sum(r.reward for r in greedy) / count,
        "eval/unparsed": sum(not r.grade.parsed for r in greedy) / count,
        "eval/truncated": sum(r.completion.finish_reason == "length" for r in greedy) / count,
    }


@dataclass
class SampledResult:
    """One problem's k sampled responses, graded."""

    problem_id: str
    rewards: list[float]
    answers: list[str | None]  # as the grader extracts them

    @property
    def pass_at_1(self) -> float:
        return sum(self.rewards) / len(self.rewards)

    @property
    def pass_at_k(self) -> float:
        return float(any(r >= CORRECT for r in self.rewards))

    @property
    def majority(self) -> float:
        """The reward of the most frequent extracted answer (ties: the one seen first; responses without an
        answer do not vote; none at all scores 0)."""
        votes = Counter(a for a in self.answers if a is not None)
        if not votes:
            return 0.0
        top = max(votes.values())
        winner = next(a for a in self.answers if a is not None and votes[a] == top)
        return self.rewards[self.answers.index(winner)]


def evaluate_sampled(
    engine: Engine,
    encode: Callable[[str], list[int]],
    decode: Callable[[list[int]], str],
    task: Task,
    problems: list[Problem],
    k: int,
    params: SamplingParams,
    generator: torch.Generator | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> list[SampledResult]:
    """k responses per problem sampled with `params`, graded; answers normalised by removing whitespace."""
    states = [State(p, encode(p.prompt), []) for p in problems]
    results = []
    for problem, group in zip(problems, rollout(engine, task, decode, states, k, params, generator, on_progress)):
        answers = [task.extract_answer(decode(r.completion.token_ids)) for r in group]
        normalised = [None if a is None else "".join(a.split()) for a in answers]
        results.append(SampledResult(problem.id, [r.reward for r in group], normalised))
    return results


def sampled_metrics(problems: list[Problem], results: list[SampledResult], k: int) -> dict[str, float]:
    """pass@1, pass@k and maj@k over all problems, and per value of each breakdown field the problems have."""
    def summary(chosen: list[SampledResult], prefix: str) -> dict[str, float]:
        n = max(len(chosen), 1)
        return {
            f"{prefix}pass@1": sum(r.pass_at_1 for r in chosen) / n,
            f"{prefix}pass@{k}": sum(r.pass_at_k for r in chosen) / n,
            f"{prefix}maj@{k}": sum(r.majority for r in chosen) / n,
            f"{prefix}problems": len(chosen),
        }

    metrics = summary(results, "eval/")
    for field in BREAKDOWN_FIELDS:
        groups: dict[str, list[SampledResult]] = defaultdict(list)
        for problem, result in zip(problems, results):
            value = getattr(problem, field, None)
            if value is not None:
                groups[str(value)].append(result)
        for value, chosen in sorted(groups.items()):
            metrics.update(summary(chosen, f"eval/{field}/{value}/"))
    return metrics
