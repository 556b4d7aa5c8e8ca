"""The console every command prints to (stderr), and rich progress bars with ETA for the phases of a run.

Without a terminal (a log file, a CI log) lines are printed whole, not wrapped at rich's default 80 columns, and
no progress bars are drawn: a redirected bar leaves its frames in the file."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def make_console(quiet: bool = False) -> Console:
    return Console(stderr=True, soft_wrap=True, quiet=quiet)


def bars_shown(console: Console, enabled: bool) -> bool:
    """Progress bars are drawn when asked for (`logging.progress`) and the console is a terminal."""
    return enabled and console.is_terminal


class Bars:
    """One overall bar for the run plus a transient bar per phase (sampling, MC rollouts, update, eval)."""

    def __init__(self, console: Console, enabled: bool):
        self.console = console
        self._progress = Progress(
            TextColumn("{task.description:<14}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            disable=not bars_shown(console, enabled),
        )

    def __enter__(self) -> "Bars":
        self._progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.__exit__(*exc)

    def overall(self, description: str, total: int, completed: int = 0) -> Callable[[int], None]:
        task = self._progress.add_task(description, total=total, completed=completed)
        return lambda n=1: self._progress.advance(task, n)

    @contextmanager
    def phase(self, description: str, total: int | None) -> Iterator["PhaseBar"]:
        """A bar that disappears when the phase ends; `total` may be set later, once known."""
        task = self._progress.add_task(description, total=total)
        try:
            yield PhaseBar(self._progress, task)
        finally:
            self._progress.remove_task(task)


class PhaseBar:
    def __init__(self, progress: Progress, task: TaskID):
        self._progress, self._task = progress, task

    def advance(self, n: int = 1) -> None:
        self._progress.advance(self._task, n)

    def set_total(self, total: int) -> None:
        self._progress.update(self._task, total=total)
