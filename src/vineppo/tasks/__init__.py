"""Tasks: problems with prompts, gold solutions and a grader (see tasks/base.py for the protocol)."""

from __future__ import annotations

from vineppo.config import TaskConfig
from vineppo.tasks.base import Grade, Problem, Task
from vineppo.tasks.prompts import ApplyChatTemplate


BUILT_IN_TASKS = ("arithmetic", "forks")  # generated here, with an alphabet the tiny model's tokenizer is built from


def build_task(cfg: TaskConfig, apply_chat_template: ApplyChatTemplate | None = None) -> Task:
    """The task named by `cfg.name`, built from its own config section.

    `apply_chat_template` (a tokenizer's) is needed only by gsm8k/math with `prompt_format: chat`.
    """
    if cfg.name == "arithmetic":
        from vineppo.tasks.arithmetic import ArithmeticTask

        return ArithmeticTask(cfg.arithmetic)
    if cfg.name == "forks":
        from vineppo.tasks.forks import ForksTask

        return ForksTask(cfg.forks)
    if cfg.name == "gsm8k":
        from vineppo.tasks.gsm8k import GSM8KTask

        return GSM8KTask(cfg.gsm8k, apply_chat_template)
    if cfg.name == "math":
        from vineppo.tasks.math import MATHTask

        return MATHTask(cfg.math, apply_chat_template)
    raise ValueError(f"task.name: unknown task '{cfg.name}' (known: arithmetic, forks, gsm8k, math)")


__all__ = ["BUILT_IN_TASKS", "Grade", "Problem", "Task", "build_task"]
