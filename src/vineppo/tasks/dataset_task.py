"""What the data-set tasks (GSM8K, MATH) share: problems read from a source by vineppo.data, a prompt format
(vineppo.tasks.prompts), and a Grader whose extraction markers depend on strict mode (vineppo.tasks.grading).
A subclass names its markers and instruction and turns one data row into a Problem."""

from __future__ import annotations

import dataclasses
from functools import cached_property

from vineppo.config import ConfigError, DatasetTaskConfig
from vineppo.data import DataError, Loaded, load_problems
from vineppo.tasks.base import Grade, Problem
from vineppo.tasks.grading import Grader, extract_answer
from vineppo.tasks.prompts import (
    EXAMPLE_SEPARATOR,
    ApplyChatTemplate,
    check_prompt_format,
    make_prompt,
    stop_sequences,
)


class DatasetTask:
    name: str
    instruction: str  # what the chat format asks for after the problem
    strict_markers: tuple[str, ...]  # the task's own answer marker (strict mode)
    lenient_markers: tuple[str, ...]  # also accepted with grader.strict = false
    missing_train_source: str = ""  # added to the error when train_source is not set

    def __init__(self, cfg: DatasetTaskConfig, apply_chat_template: ApplyChatTemplate | None = None) -> None:
        self.cfg = cfg
        self.apply_chat_template = apply_chat_template
        self.stop_sequences = stop_sequences(cfg.prompt_format)
        markers = self.strict_markers if cfg.grader.strict else self.lenient_markers
        self.grader = Grader(markers, timeout_s=cfg.grader.timeout_s, workers=cfg.grader.workers)
        self.skipped_rows: dict[str, int] = {}  # per split, the malformed rows skipped (skip_bad_rows)
        check_prompt_format(cfg.prompt_format, apply_chat_template)
        if cfg.few_shot and cfg.prompt_format != "plain":
            raise ConfigError(f"task.{self.name}.few_shot needs prompt_format 'plain' (the chat format is zero-shot)")

    def row_to_problem(self, row: dict, row_id: str) -> Problem:
        """One data row as a Problem, or `vineppo.data.BadRow` naming the field that is wrong."""
        raise NotImplementedError

    def prompt(self, problem_text: str) -> str:
        return make_prompt(self.cfg.prompt_format, problem_text, self.instruction, self.apply_chat_template)

    def _load(self, source: str, split: str) -> list[Problem]:
        loaded: Loaded = load_problems(
            source, split, self.row_to_problem, hub_config=self.cfg.hub_config, skip_bad_rows=self.cfg.skip_bad_rows
        )
        self.skipped_rows[split] = loaded.skipped
        return loaded.items

    @cached_property
    def _train_as_loaded(self) -> list[Problem]:
        if self.cfg.train_source is None:
            raise DataError(f"task.{self.name}.train_source is not set{self.missing_train_source}")
        return self._load(self.cfg.train_source, "train")

    @cached_property
    def _examples(self) -> str:
        """The few-shot prefix: the first `few_shot` training problems with their gold solutions."""
        if not self.cfg.few_shot:
            return ""
        return "".join(p.prompt + p.solution + EXAMPLE_SEPARATOR for p in self._train_as_loaded[: self.cfg.few_shot])

    def _with_examples(self, problems: list[Problem]) -> list[Problem]:
        if not self._examples:
            return problems
        return [dataclasses.replace(p, prompt=self._examples + p.prompt) for p in problems]

    @cached_property
    def _train(self) -> list[Problem]:
        return self._with_examples(self._train_as_loaded)

    @cached_property
    def _test(self) -> list[Problem]:
        return self._with_examples(self._load(self.cfg.test_source, "test")[: self.cfg.test_size])

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
