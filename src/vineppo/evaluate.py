"""Greedy test-set accuracy of a policy on a task."""

from __future__ import annotations

from typing import Callable

from vineppo.engine.base import Engine, SamplingParams
from vineppo.episodes import grade_response
from vineppo.tasks.base import Problem, Task


def evaluate_greedy(
    engine: Engine,
    encode: Callable[[str], list[int]],
    decode: Callable[[list[int]], str],
    task: Task,
    problems: list[Problem],
    max_new_tokens: int,
    on_progress: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """Accuracy (mean reward of the greedy response), the fraction with no parseable answer, and the fraction
    cut off at the length limit."""
    prompts = [encode(p.prompt) for p in problems]
    params = SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens)
    completions = engine.generate(prompts, 1, params, on_progress=on_progress)
    rewards, unparsed, truncated = 0.0, 0, 0
    for problem, (completion,) in zip(problems, completions):
        grade = grade_response(task, problem, decode(completion.token_ids), completion.finish_reason)
        rewards += grade.reward
        unparsed += not grade.parsed
        truncated += completion.finish_reason == "length"
    count = max(len(problems), 1)
    return {"eval/accuracy": rewards / count, "eval/unparsed": unparsed / count, "eval/truncated": truncated / count}
