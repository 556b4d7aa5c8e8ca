"""GSM8K (Cobbe et al. 2021): grade-school word problems with integer answers.

Rows have `question` and `answer`; the answer holds the reasoning, one step per line with `<<a*b=c>>` calculator
notes, then a final line `#### N`. A problem's gold solution is those lines without the calculator notes (as in
the paper, PAPER-NOTES 2.9), ending with the line `#### N`; its answer is N without thousands commas.

Grading: the number that starts the text after the response's last `####` must equal N. In strict mode (the
default) nothing else counts; with `grader.strict = false`, a `\\boxed{}` or "The answer is" is accepted too.
"""

from __future__ import annotations

import re
from functools import cached_property

from vineppo.config import GSM8KConfig
from vineppo.data import BadRow, Loaded, load_problems, required_text
from vineppo.tasks.base import Grade, Problem
from vineppo.tasks.grading import Grader, extract_answer, plain_number
from vineppo.tasks.prompts import (
    ApplyChatTemplate,
    check_prompt_format,
    make_prompt,
    response_text,
    stop_sequences,
)

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


class GSM8KTask:
    name = "gsm8k"

    def __init__(self, cfg: GSM8KConfig, apply_chat_template: ApplyChatTemplate | None = None) -> None:
        self.cfg = cfg
        self.apply_chat_template = apply_chat_template
        self.stop_sequences = stop_sequences(cfg.prompt_format)
        markers = ("hash",) if cfg.grader.strict else ("hash", "boxed", "answer_is")
        self.grader = Grader(markers, timeout_s=cfg.grader.timeout_s, workers=cfg.grader.workers)
        self.skipped_rows: dict[str, int] = {}
        check_prompt_format(cfg.prompt_format, apply_chat_template)

    def _problem(self, row: dict, row_id: str) -> Problem:
        question = required_text(row, "question")
        lines, final = parse_gsm8k_answer(required_text(row, "answer"))
        solution = "\n".join([*lines, f"#### {final}"])
        return Problem(
            id=f"gsm8k/{row_id}",
            prompt=make_prompt(self.cfg.prompt_format, question.strip(), INSTRUCTION, self.apply_chat_template),
            solution=response_text(self.cfg.prompt_format, solution),
            answer=final,
        )

    def _load(self, source: str, split: str) -> list[Problem]:
        loaded: Loaded = load_problems(
            source, split, self._problem, hub_config=self.cfg.hub_config, skip_bad_rows=self.cfg.skip_bad_rows
        )
        self.skipped_rows[split] = loaded.skipped
        return loaded.items

    @cached_property
    def _train(self) -> list[Problem]:
        return self._load(self.cfg.train_source, "train")

    @cached_property
    def _test(self) -> list[Problem]:
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
