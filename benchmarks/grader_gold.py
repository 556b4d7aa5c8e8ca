"""Grade every gold solution against its own answer: GSM8K test (target 1319/1319) and MATH500 (target >= 99%).

Each data set is graded with the tasks' default strict grader (exact-string and plain-number shortcuts,
math-verify for the rest) and with every answer sent to math-verify (`shortcuts=False`), which shows whether
math-verify itself accepts each gold answer, i.e. whether a model that writes it could ever be rewarded.
A third pass grades each gold solution against the next problem's (different) answer, counting false positives.
Prints one JSON object: per data set and mode, the count correct, each failure (id, gold answer, extracted
answer), answers per second graded one at a time (as `Task.grade` is called) and in one batch (`grade_batch`, all
workers busy), the slowest answer's seconds (one at a time), and the grader's timeout/crash counts.

    python benchmarks/grader_gold.py [--data ../shared/data] [--timeout 5] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from vineppo.config import GraderConfig, GSM8KConfig, MATHConfig
from vineppo.tasks.base import Problem
from vineppo.tasks.grading import Grader, extract_answer
from vineppo.tasks.gsm8k import GSM8KTask
from vineppo.tasks.math import MATHTask


def grade_gold(problems: list[Problem], markers: tuple[str, ...], shortcuts: bool, grader_cfg: GraderConfig) -> dict:
    grader = Grader(markers, timeout_s=grader_cfg.timeout_s, workers=grader_cfg.workers, shortcuts=shortcuts)
    if not shortcuts:
        grader.start()  # worker start-up is not grading time
    slowest = (0.0, "")
    grades = []
    start = time.perf_counter()
    for problem in problems:  # one at a time, as the training loop grades, to time each answer
        t0 = time.perf_counter()
        grades.append(grader.grade(problem.solution, problem.answer))
        elapsed = time.perf_counter() - t0
        slowest = max(slowest, (elapsed, problem.id))
    seconds = time.perf_counter() - start
    grader.close()
    with Grader(markers, timeout_s=grader_cfg.timeout_s, workers=grader_cfg.workers, shortcuts=shortcuts) as fresh:
        if not shortcuts:
            fresh.start()  # a fresh grader, so that math-verify's caches in the workers start cold again
        start = time.perf_counter()
        batch_grades = fresh.grade_batch([(p.solution, p.answer) for p in problems])  # all workers busy at once
        batch_seconds = time.perf_counter() - start
    failures = [
        {"id": p.id, "gold": p.answer, "extracted": extract_answer(p.solution, markers), "parsed": g.parsed}
        for p, g in zip(problems, grades)
        if g.reward != 1.0
    ]
    return {
        "correct": len(problems) - len(failures),
        "total": len(problems),
        "accuracy": round(1 - len(failures) / len(problems), 4),
        "answers_per_s": round(len(problems) / seconds, 1),
        "batch_answers_per_s": round(len(problems) / batch_seconds, 1),
        "batch_disagreements": sum(a != b for a, b in zip(grades, batch_grades)),
        "slowest_answer_s": round(slowest[0], 3),
        "slowest_answer_id": slowest[1],
        "sent_to_math_verify": grader.stats.verified + grader.stats.timeouts + grader.stats.worker_crashes,
        "timeouts": grader.stats.timeouts + fresh.stats.timeouts,
        "worker_crashes": grader.stats.worker_crashes + fresh.stats.worker_crashes,
        "failures": failures,
    }


def grade_mismatched(problems: list[Problem], markers: tuple[str, ...], grader_cfg: GraderConfig) -> dict:
    """Each gold solution against the next problem's answer (where the two answers differ as text): every
    acceptance is a false positive unless the two answers really are equivalent."""
    pairs = [(p, q) for p, q in zip(problems, problems[1:] + problems[:1]) if p.answer.strip() != q.answer.strip()]
    with Grader(markers, timeout_s=grader_cfg.timeout_s, workers=grader_cfg.workers) as grader:
        grades = grader.grade_batch([(p.solution, q.answer) for p, q in pairs])
        timeouts = grader.stats.timeouts
    accepted = [
        {"id": p.id, "answer": p.answer, "other_answer": q.answer} for (p, q), g in zip(pairs, grades) if g.reward
    ]
    return {"pairs": len(pairs), "accepted": len(accepted), "timeouts": timeouts, "accepted_pairs": accepted}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    data = Path(args.data)
    grader_cfg = GraderConfig(timeout_s=args.timeout, workers=args.workers)
    gsm8k = GSM8KTask(GSM8KConfig(test_source=str(data / "gsm8k" / "test.jsonl"), grader=grader_cfg))
    math = MATHTask(MATHConfig(test_source=str(data / "math500" / "test.jsonl"), grader=grader_cfg))
    report = {}
    for name, task, markers in [("gsm8k_test", gsm8k, ("hash",)), ("math500", math, ("boxed",))]:
        problems = task.test_problems()
        report[name] = {
            "default": grade_gold(problems, markers, shortcuts=True, grader_cfg=grader_cfg),
            "math_verify_only": grade_gold(problems, markers, shortcuts=False, grader_cfg=grader_cfg),
            "mismatched_answers": grade_mismatched(problems, markers, grader_cfg),
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
