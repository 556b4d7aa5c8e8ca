"""GSM8K (Cobbe et al. 2021): grade-school word problems with integer answers.

Rows have `question` and `answer`; the answer holds the reasoning, one step per line with `<<a*b=c>>` calculator
notes, then a final line `#### N`. A problem's gold solution is those lines without the calculator notes (as in
the paper, PAPER-NOTES 2.9), ending with the line `#### N`; its answer is N without thousands commas.

Grading: the number that starts the text after the response's last `####` must equal N. In strict mode (the
default) nothing else counts; with `grader.strict = false`, a `\\boxed{}` or "The answer is" is accepted too.
"""

from __future__ import annotations

import re

from vineppo.config import GSM8KConfig
from vineppo.data import BadRow, required_text
from vineppo.tasks.base import Problem
from vineppo.tasks.dataset_task import DatasetTask
from vineppo.tasks.grading import plain_number
from vineppo.tasks.prompts import response_text

INSTRUCTION = "Solve the problem step by step, one step per line, and end with a line '#### <answer>'."

_CALCULATOR_NOTE = re.compile(r"<<[^<>\n]*>>")


def parse_gsm8k_answer(answer: str) -> tuple[list[str], str]:
    """(reasoning lines without calculator notes, final answer without commas) of a GSM8K `answer` field."""
    if "####" not in answer:
        raise BadRow("answer", "no '#### <number>' final answer line")
    reasoning, final = answer.rsplit("####", 1)
    final = final.strip()
    if plain_number(final) is None:
        raise BadRow("answer", f"the text after '####' is not a number: {final[:40]!r}")
    lines = [line.strip() for line in _CALCULATOR_NOTE.sub("", reasoning).split("\n")]
    return [line for line in lines if line], final.replace(",", "")


class GSM8KTask(DatasetTask):
    name = "gsm8k"
    cfg: GSM8KConfig
    instruction = INSTRUCTION
    strict_markers = ("hash",)
    lenient_markers = ("hash", "boxed", "answer_is")

    def row_to_problem(self, row: dict, row_id: str) -> Problem:
        question = required_text(row, "question")
        lines, final = parse_gsm8k_answer(required_text(row, "answer"))
        solution = "\n".join([*lines, f"#### {final}"])
        return Problem(
            id=f"gsm8k/{row_id}",
            prompt=self.prompt(question.strip()),
            solution=response_text(self.cfg.prompt_format, solution),
            answer=final,
        )
