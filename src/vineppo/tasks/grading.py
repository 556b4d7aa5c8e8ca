"""Final-answer extraction and answer equivalence for GSM8K and MATH.

Grading a response is two steps:

1. **Extraction** (here, in the caller's process, linear-time string scans): the text of the final answer, found by
   the markers a task allows, in priority order: `boxed` (the last `\\boxed{...}`, braces balanced), `hash` (the
   text after the last `####` on its line; GSM8K takes the number it starts with), `answer_is` (after the last
   "the answer is", to the end of its line). Strict mode (the default) allows only the task's own marker, so a
   bare number cannot earn reward; a response with no such marker gets reward 0 with `parsed=False`.
2. **Equivalence** of the extracted answer with the gold one: an exact string match, or both plain numbers
   (thousands commas, decimals, a sign) compared as decimals, are settled at once; anything else goes to
   `math_verify` (`parse` + `verify`) in a worker process. math-verify's own timeout uses `signal.alarm`, which
   fails off the main thread, so it is disabled there (`parsing_timeout=None`, `timeout_seconds=None`) and the
   limit is enforced from outside: a worker still busy after `timeout_s` is killed and replaced, and the answer
   gets reward 0 and is counted in `GraderStats.timeouts`. Model output is never evaluated as code.
"""

from __future__ import annotations

import multiprocessing
import re
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from multiprocessing.connection import Connection, wait

from vineppo.tasks.base import Grade

MARKERS = ("boxed", "hash", "answer_is")

MAX_ANSWER_CHARS = 1000
"""Extracted answers longer than this get reward 0 without being parsed (no gold answer comes close)."""

_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+]?\.\d+")
_LEADING_NUMBER = re.compile(r"\s*\$?\s*([-+]?\$?(?:\d[\d,]*(?:\.\d+)?|\.\d+))")
_ANSWER_IS = re.compile(r"the (?:final )?answer is[:\s]*", re.IGNORECASE)


# --------------------------------------------------------------------------------------------- extraction


def last_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` (or `\\fbox{...}`) whose braces balance, else None.

    Linear in the length of the text: brace pairs are matched in one pass, then the commands are tried from the last.
    """
    closing = _matching_braces(text)
    for command in ("\\boxed", "\\fbox"):
        start = text.rfind(command)
        while start != -1:
            brace = start + len(command)
            while brace < len(text) and text[brace] == " ":
                brace += 1
            if brace in closing:
                return text[brace + 1 : closing[brace]]
            start = text.rfind(command, 0, start)
    return None


def _matching_braces(text: str) -> dict[int, int]:
    """Offset of each `{` that is closed -> offset of its `}`."""
    closing: dict[int, int] = {}
    open_braces: list[int] = []
    for pos, char in enumerate(text):
        if char == "{":
            open_braces.append(pos)
        elif char == "}" and open_braces:
            closing[open_braces.pop()] = pos
    return closing


def after_hashes(text: str) -> str | None:
    """The number that starts the text after the last `####` (GSM8K's answer line), or None.

    `$1,200 dollars.` gives `1,200`: GSM8K answers are numbers, and this is where the paper's grader looks. A
    number followed by `/`, `^` or `*` gives the whole expression (`3/4`), for math-verify to compare.
    """
    start = text.rfind("####")
    if start == -1:
        return None
    line = text[start + 4 :].split("\n", 1)[0]
    match = _LEADING_NUMBER.match(line)
    if match is None:
        return None
    if line[match.end() : match.end() + 1] in ("/", "^", "*"):  # `3/4` is not the number 3: keep the expression
        return line.split()[0].replace("$", "").rstrip(".")
    return match.group(1).replace("$", "").rstrip(".").rstrip(",") or None


def after_answer_is(text: str) -> str | None:
    """What follows the last "the answer is" up to the end of its line, without `$` delimiters or a final period."""
    tail = text[-10 * MAX_ANSWER_CHARS :]
    matches = list(_ANSWER_IS.finditer(tail))
    if not matches:
        return None
    line = tail[matches[-1].end() :].split("\n", 1)[0].strip()
    line = line.rstrip(".").strip().strip("$").strip()
    return line or None


_EXTRACTORS = {"boxed": last_boxed, "hash": after_hashes, "answer_is": after_answer_is}


def extract_answer(text: str, markers: Sequence[str]) -> str | None:
    """The final answer found by the first of `markers` that matches (see the module docstring), else None."""
    for marker in markers:
        answer = _EXTRACTORS[marker](text)
        if answer is not None and answer.strip():
            return answer.strip()
    return None


# --------------------------------------------------------------------------------------------- equivalence


def plain_number(text: str) -> Decimal | None:
    """`text` as a decimal if it is a plain number (`-1,234.5`, `.5`, `+3`), else None."""
    text = text.strip()
    if len(text) > 100 or not _NUMBER.fullmatch(text):
        return None
    try:
        return Decimal(text.replace(",", ""))
    except InvalidOperation:
        return None


def quick_equivalence(gold: str, answer: str) -> bool | None:
    """True/False when the answer can be settled without math-verify (same string, or two plain numbers)."""
    if gold.strip() == answer.strip():
        return True
    gold_number, answer_number = plain_number(gold), plain_number(answer)
    if gold_number is not None and answer_number is not None:
        return gold_number == answer_number
    return None


def math_verify_equivalent(gold: str, answer: str) -> bool:
    """math-verify's verdict on two extracted answers, each parsed as the content of a `\\boxed{}`.

    Runs without math-verify's signal-based timeouts: call it only where a time limit is enforced from outside
    (the grading workers).
    """
    from math_verify import parse, verify

    gold_parsed = parse(f"\\boxed{{{gold}}}", parsing_timeout=None)
    answer_parsed = parse(f"\\boxed{{{answer}}}", parsing_timeout=None)
    if not gold_parsed or not answer_parsed:
        return False
    return bool(verify(gold_parsed, answer_parsed, timeout_seconds=None))


def _worker_main(conn: Connection) -> None:
    """A grading worker: imports math-verify once, then answers (gold, answer) pairs until it gets None."""
    import logging

    logging.getLogger("math_verify").setLevel(logging.ERROR)  # its "timeout is disabled" warning is expected here
    import math_verify  # noqa: F401  (imported before "ready" so that import time never counts as grading time)

    conn.send("ready")
    while True:
        job = conn.recv()
        if job is None:
            return
        try:
            result = math_verify_equivalent(*job)
        except Exception:  # (RecursionError, sympy errors...: all mean "not shown equivalent")
            result = False
        conn.send(result)


# --------------------------------------------------------------------------------------------- the grader


@dataclass
class GraderStats:
    """Counters since the grader was made: answers graded, unparsed, settled without math-verify, sent to
    math-verify, timed out (reward 0), and workers that died (reward 0) or were killed and replaced."""

    graded: int = 0
    unparsed: int = 0
    quick: int = 0
    verified: int = 0
    timeouts: int = 0
    worker_crashes: int = 0
    slowest_s: float = 0.0


class _Worker:
    def __init__(self, ctx: multiprocessing.context.BaseContext) -> None:
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child,), daemon=True, name="vineppo-grader")
        self.process.start()
        child.close()
        self.ready = False
        self.job: tuple[int, float, float] | None = None  # (index, start time, deadline)

    def kill(self) -> None:
        self.process.kill()
        self.process.join()
        self.conn.close()

    def stop(self) -> None:
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.process.join(timeout=1)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


class Grader:
    """Grades responses against gold answers: extraction here, math-verify in `workers` spawned processes with
    a hard limit of `timeout_s` per answer. Thread-safe; workers start on first need. Close it (or use `with`)
    to stop them; they are daemons, so they also end with the process."""

    def __init__(
        self,
        markers: Sequence[str],
        timeout_s: float = 5.0,
        workers: int = 2,
        shortcuts: bool = True,
    ) -> None:
        """`markers`: the extraction markers, in priority order (strict mode: the task's own one only).
        `shortcuts=False` sends every parsed answer to math-verify (used to check math-verify on gold data)."""
        unknown = set(markers) - set(MARKERS)
        if unknown or not markers:
            raise ValueError(f"grader markers: expected some of {MARKERS}, got {list(markers)}")
        self.markers = tuple(markers)
        self.timeout_s = timeout_s
        self.num_workers = workers
        self.shortcuts = shortcuts
        self.stats = GraderStats()
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        self._ctx = multiprocessing.get_context("spawn")

    def grade(self, response: str, gold: str) -> Grade:
        return self.grade_batch([(response, gold)])[0]

    def grade_batch(self, pairs: Iterable[tuple[str, str]]) -> list[Grade]:
        """Grades of (response, gold answer) pairs, in order."""
        with self._lock:
            return self._grade_batch(list(pairs))

    def _grade_batch(self, pairs: list[tuple[str, str]]) -> list[Grade]:
        grades: list[Grade | None] = [None] * len(pairs)
        to_verify: list[tuple[int, str, str]] = []
        for index, (response, gold) in enumerate(pairs):
            answer = extract_answer(response, self.markers)
            if answer is None:
                grades[index] = Grade(0.0, parsed=False)
                self.stats.unparsed += 1
                continue
            verdict = None
            if len(answer) > MAX_ANSWER_CHARS:
                verdict = False
            elif self.shortcuts:
                verdict = quick_equivalence(gold, answer)
            if verdict is not None:
                grades[index] = Grade(float(verdict), parsed=True)
                self.stats.quick += 1
            else:
                to_verify.append((index, gold, answer))
        for index, verdict in self._verify(to_verify).items():
            grades[index] = Grade(float(verdict), parsed=True)
        self.stats.graded += len(pairs)
        return grades  # type: ignore[return-value]

    def _verify(self, jobs: list[tuple[int, str, str]]) -> dict[int, bool]:
        """Runs the jobs on the workers; a job past its deadline or whose worker dies is False."""
        if not jobs:
            return {}
        self._spawn_missing()
        pending = deque(jobs)
        results: dict[int, bool] = {}
        while len(results) < len(jobs):
            for worker in self._workers:
                if worker.ready and worker.job is None and pending:
                    index, gold, answer = pending[0]
                    try:
                        worker.conn.send((gold, answer))
                    except OSError:  # died while idle: replace it, the job waits for another worker
                        self._replace(worker, results, crashed=True)
                        continue
                    pending.popleft()
                    now = time.monotonic()
                    worker.job = (index, now, now + self.timeout_s)
            deadlines = [w.job[2] for w in self._workers if w.job is not None]
            timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
            for conn in wait([w.conn for w in self._workers], timeout=timeout):
                worker = next(w for w in self._workers if w.conn is conn)
                try:
                    message = conn.recv()
                except (EOFError, OSError):
                    self._replace(worker, results, crashed=True)
                    continue
                if message == "ready":
                    worker.ready = True
                else:
                    self._finish(worker, results, bool(message))
            now = time.monotonic()
            for worker in list(self._workers):
                if worker.job is not None and now >= worker.job[2]:
                    self._replace(worker, results, crashed=False)
        return results

    def _spawn_missing(self) -> None:
        while len(self._workers) < self.num_workers:
            self._workers.append(_Worker(self._ctx))

    def start(self) -> None:
        """Starts the workers now and waits until they are ready (otherwise they start on first need)."""
        with self._lock:
            self._spawn_missing()
            while not all(worker.ready for worker in self._workers):
                for conn in wait([w.conn for w in self._workers if not w.ready]):
                    worker = next(w for w in self._workers if w.conn is conn)
                    try:
                        worker.ready = conn.recv() == "ready"
                    except (EOFError, OSError):
                        raise RuntimeError("grader: a math-verify worker died while starting") from None

    def _finish(self, worker: _Worker, results: dict[int, bool], verdict: bool) -> None:
        index, start, _ = worker.job  # type: ignore[misc]
        results[index] = verdict
        self.stats.verified += 1
        self.stats.slowest_s = max(self.stats.slowest_s, time.monotonic() - start)
        worker.job = None

    def _replace(self, worker: _Worker, results: dict[int, bool], crashed: bool) -> None:
        """Kills a hung or dead worker, starts a new one, and fails the answer it held."""
        if worker.job is None and crashed and not worker.ready:
            raise RuntimeError("grader: a math-verify worker died while starting (is math-verify installed?)")
        if worker.job is not None:
            index, start, _ = worker.job
            results[index] = False
            self.stats.slowest_s = max(self.stats.slowest_s, time.monotonic() - start)
            if crashed:
                self.stats.worker_crashes += 1
            else:
                self.stats.timeouts += 1
        worker.kill()
        self._workers[self._workers.index(worker)] = _Worker(self._ctx)

    def close(self) -> None:
        with self._lock:
            for worker in self._workers:
                worker.stop()
            self._workers = []

    def __enter__(self) -> Grader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
