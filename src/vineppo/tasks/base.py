"""What a task is: problems with prompts and gold solutions, and a grader that turns a response into a reward."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Problem:
    """One problem. `prompt` is the exact text the model is conditioned on; `solution` is a gold response
    (one reasoning step per line, then the final answer line) used for SFT; `answer` is the gold final answer."""

    id: str
    prompt: str
    solution: str
    answer: str


@dataclass(frozen=True)
class Grade:
    """reward in [0, 1]; parsed is False when no final answer could be extracted (reward is then 0)."""

    reward: float
    parsed: bool


CORRECT = 1.0  # the reward of a correct answer: RestEM keeps, DPO+ prefers and accuracies count such responses


class Task(Protocol):
    name: str
    stop_sequences: tuple[str, ...]
    """Strings that end a response like eos (the engine stops there); empty for most tasks."""

    def train_problems(self) -> list[Problem]: ...

    def sft_problems(self) -> list[Problem]:
        """The training problems with the demonstrations SFT learns from (the gold ones unless the task says)."""
        ...

    def test_problems(self) -> list[Problem]: ...

    def grade(self, problem: Problem, response: str) -> Grade:
        """Grade the response text (without eos). Must never execute model output."""
        ...

    def grade_batch(self, problems: list[Problem], responses: list[str]) -> list[Grade]:
        """`grade` of each (problem, response) pair, in order."""
        ...

    def extract_answer(self, response: str) -> str | None:
        """The final answer the grader would read from the response (None if there is none); majority votes
        group responses by it."""
        ...
