"""MATH (Hendrycks et al. 2021) and its MATH500 subset: competition problems with LaTeX answers.

Rows have `problem` and `solution` (whose last `\\boxed{...}` holds the answer), and optionally `answer`, `level`
(an integer or "Level 3"), `subject` (or `type`, as in the original release) and `unique_id`. The gold solution
is kept as written, `\\boxed{}` included; the gold answer is the `answer` field, or else the solution's last
`\\boxed{}`.

MATH500 (the default test source) has no train split: `task.math.train_source` must name the training problems
(a local copy of the MATH train split, or a hub id), or asking for them raises an error that says so.

Grading: the response's last `\\boxed{}` must be equivalent to the answer (math-verify, in worker processes). In
strict mode (the default) nothing else counts; with `grader.strict = false`, "The answer is ..." is accepted too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

from vineppo.config import MATHConfig
from vineppo.data import BadRow, DataError, Loaded, load_problems, required_text
from vineppo.tasks.base import Grade, Problem
from vineppo.tasks.grading import Grader, extract_answer, last_boxed
from vineppo.tasks.prompts import (
    ApplyChatTemplate,
    check_prompt_format,
    make_prompt,
    response_text,
    stop_sequences,
)

INSTRUCTION = "Solve the problem step by step and put the final answer in \\boxed{}."


@dataclass(frozen=True)
class MathProblem(Problem):
    """A MATH problem with its difficulty level (1-5, None if unknown) and subject, for per-level reports."""

    level: int | None = None
    subject: str | None = None


def _level(row: dict) -> int | None:
    value = row.get("level")
    if value is None or isinstance(value, int):
        return value
    match = re.search(r"\d+", str(value))  # "Level 3"; the original release also has "Level ?"
    return int(match.group()) if match else None


def _answer(row: dict, solution: str) -> str:
    answer = row.get("answer")
    if answer is not None and not isinstance(answer, str):
        raise BadRow("answer", f"expected text, got {type(answer).__name__}")
    if answer and answer.strip():
        return answer.strip()
    return last_boxed(solution).strip()  # the caller checked that the solution has one


class MATHTask:
    name = "math"

    def __init__(self, cfg: MATHConfig, apply_chat_template: ApplyChatTemplate | None = None) -> None:
        self.cfg = cfg
        self.apply_chat_template = apply_chat_template
        self.stop_sequences = stop_sequences(cfg.prompt_format)
        markers = ("boxed",) if cfg.grader.strict else ("boxed", "answer_is")
        self.grader = Grader(markers, timeout_s=cfg.grader.timeout_s, workers=cfg.grader.workers)
        self.skipped_rows: dict[str, int] = {}
        check_prompt_format(cfg.prompt_format, apply_chat_template)

    def _problem(self, row: dict, row_id: str) -> MathProblem:
        problem = required_text(row, "problem")
        solution = required_text(row, "solution")
        if not last_boxed(solution):
            raise BadRow("solution", "no \\boxed{...} final answer")
        subject = row.get("subject") or row.get("type")
        unique_id = row.get("unique_id")
        return MathProblem(
            id=f"math/{unique_id}" if unique_id else f"math/{row_id}",
            prompt=make_prompt(self.cfg.prompt_format, problem.strip(), INSTRUCTION, self.apply_chat_template),
            solution=response_text(self.cfg.prompt_format, solution.strip()),
            answer=_answer(row, solution),
            level=_level(row),
            subject=str(subject) if subject else None,
        )

    def _load(self, source: str, split: str) -> list[MathProblem]:
        loaded: Loaded = load_problems(
            source, split, self._problem, hub_config=self.cfg.hub_config, skip_bad_rows=self.cfg.skip_bad_rows
        )
        self.skipped_rows[split] = loaded.skipped
        return loaded.items

    @cached_property
    def _train(self) -> list[MathProblem]:
        if self.cfg.train_source is None:
            raise DataError(
                "task.math.train_source is not set: MATH500 has test problems only; set it to a hub id or a local "
                "file/directory of MATH training problems (problem, solution with \\boxed{})"
            )
        return self._load(self.cfg.train_source, "train")

    @cached_property
    def _test(self) -> list[MathProblem]:
        return self._load(self.cfg.test_source, "test")[: self.cfg.test_size]

    def train_problems(self) -> list[Problem]:
        return list(self._train)

    def sft_problems(self) -> list[Problem]:
        return list(self._train)

    def test_problems(self) -> list[Problem]:
        return list(self._test)

    def extract_answer(self, response: str) -> str | None:
        return extract_answer(response, self.grader.markers)

    def grade(self, problem: Problem, response: str) -> Grade:
        return self.grader.grade(response, problem.answer)

    def grade_batch(self, problems: list[Problem], responses: list[str]) -> list[Grade]:
        return self.grader.grade_batch(zip(responses, [p.answer for p in problems], strict=True))
