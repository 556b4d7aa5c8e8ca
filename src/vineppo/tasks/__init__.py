"""Tasks: problems with prompts, gold solutions and a grader (see tasks/base.py for the protocol)."""

from __future__ import annotations

from vineppo.config import TaskConfig
from vineppo.tasks.base import Grade, Problem, Task


def build_task(cfg: TaskConfig) -> Task:
    """The task named by `cfg.name`, built from its own config section."""
    if cfg.name == "arithmetic":
        from vineppo.tasks.arithmetic import ArithmeticTask

        return ArithmeticTask(cfg.arithmetic)
    raise ValueError(f"task.name: unknown task '{cfg.name}' (known: arithmetic)")


__all__ = ["Grade", "Problem", "Task", "build_task"]
