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

from vineppo.config import MATHConfig
from vineppo.data import BadRow, required_text
from vineppo.tasks.base import Problem
from vineppo.tasks.dataset_task import DatasetTask
from vineppo.tasks.grading import last_boxed
from vineppo.tasks.prompts import response_text

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


class MATHTask(DatasetTask):
    name = "math"
    cfg: MATHConfig
    instruction = INSTRUCTION
    strict_markers = ("boxed",)
    lenient_markers = ("boxed", "answer_is")
    missing_train_source = (
        ": MATH500 has test problems only; set it to a hub id or a local file/directory of MATH training problems "
        "(problem, solution with \\boxed{})"
    )

    def row_to_problem(self, row: dict, row_id: str) -> MathProblem:
        problem = required_text(row, "problem")
        solution = required_text(row, "solution")
        if not last_boxed(solution):
            raise BadRow("solution", "no \\boxed{...} final answer")
        subject = row.get("subject") or row.get("type")
        unique_id = row.get("unique_id")
        return MathProblem(
            id=f"math/{unique_id}" if unique_id else f"math/{row_id}",
            prompt=self.prompt(problem.strip()),
            solution=response_text(self.cfg.prompt_format, solution.strip()),
            answer=_answer(row, solution),
            level=_level(row),
            subject=str(subject) if subject else None,
        )
