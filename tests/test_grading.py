"""The grader: answer extraction, equivalence on a table of answer pairs, strict mode, time limits, dead workers."""

from __future__ import annotations

import os
import signal
import time

import pytest

from vineppo.tasks.base import Grade
from vineppo.tasks.grading import Grader, extract_answer, last_boxed, quick_equivalence

TIMEOUT_S = 2.0

# (gold answer, model answer, equivalent?)
EQUIVALENT = [
    ("1,000", "1000"),
    ("1000", "1,000"),
    ("12,345,678", "12345678"),
    ("-5", "-5"),
    ("0", "-0"),
    ("3.0", "3"),
    ("3.14", "3.140"),
    ("0.5", "\\frac{1}{2}"),
    ("\\frac{1}{2}", "\\dfrac{1}{2}"),
    ("\\frac{1}{2}", "1/2"),
    ("\\tfrac{3}{4}", "0.75"),
    ("1.5", "\\frac{3}{2}"),
    ("-0.25", "-\\frac14"),
    ("-\\frac{2}{3}", "\\frac{-2}{3}"),
    ("50\\%", "50"),
    ("50\\%", "50\\%"),
    ("5\\text{ cm}", "5"),
    ("10\\text{ inches}", "10"),
    ("\\$18", "18"),
    ("90^\\circ", "90"),
    ("(-\\infty, 3]", "(-\\infty,3]"),
    ("[2, 5)", "[2,5)"),
    ("(1,2)\\cup(3,4)", "(3,4)\\cup(1,2)"),
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}"),
    ("\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}", "\\begin{bmatrix} 1 & 2 \\\\ 3 & 4 \\end{bmatrix}"),
    ("\\text{Evelyn}", "Evelyn"),
    ("p - q", "-q + p"),
    ("x^2+2x+1", "(x+1)^2"),
    ("\\sqrt{2}/2", "\\frac{\\sqrt{2}}{2}"),
    ("2\\sqrt{3}", "\\sqrt{12}"),
    ("\\frac{\\pi}{2}", "\\pi/2"),
    ("\\{1,2,3\\}", "\\{3,2,1\\}"),
    ("x=3", "3"),
    ("10^{3}", "1000"),
    ("2^{10}", "1024"),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3, \\frac{\\pi}{2})"),
]
NOT_EQUIVALENT = [
    ("1000", "100"),
    ("1,000", "1.000"),
    ("12,345,678", "12,345,679"),
    ("-5", "5"),
    ("0.5", "0.05"),
    ("1.5", "1.05"),
    ("\\frac{1}{2}", "\\frac{2}{1}"),
    ("-\\frac{2}{3}", "\\frac{2}{3}"),
    ("50\\%", "5"),
    ("5\\text{ cm}", "6"),
    ("\\$18", "81"),
    ("(-\\infty, 3]", "(-\\infty, 3)"),
    ("[2,5)", "(2,5]"),
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix} 2 \\\\ 1 \\end{pmatrix}"),
    ("\\text{Evelyn}", "\\text{Bob}"),
    ("x^2+2x+1", "(x-1)^2"),
    ("p - q", "q - p"),
    ("2\\sqrt{3}", "3\\sqrt{2}"),
    ("\\pi", "3.14"),
    ("\\frac{\\pi}{2}", "\\frac{\\pi}{3}"),
    ("10^{3}", "100"),
    ("2^{10}", "1000"),
    ("x=3", "x=4"),
    ("\\{1,2\\}", "\\{1,2,3\\}"),
]
PAIRS = [(gold, answer, True) for gold, answer in EQUIVALENT] + [(g, a, False) for g, a in NOT_EQUIVALENT]


@pytest.fixture(scope="module")
def boxed_grader():
    with Grader(["boxed"], timeout_s=TIMEOUT_S, workers=2) as grader:
        grader.start()
        yield grader


@pytest.fixture(scope="module")
def hash_grader():
    with Grader(["hash"], timeout_s=TIMEOUT_S, workers=1) as grader:  # starts a worker only for `3/4`
        yield grader


def test_the_table_is_big_enough():
    assert len(PAIRS) >= 60


def test_answer_pairs(boxed_grader):
    responses = [(f"Some steps.\nSo the answer is $\\boxed{{{answer}}}$.", gold) for gold, answer, _ in PAIRS]
    grades = boxed_grader.grade_batch(responses)
    wrong = [(gold, answer, g.reward) for (gold, answer, expected), g in zip(PAIRS, grades) if g.reward != expected]
    assert wrong == []
    assert all(grade.parsed for grade in grades)
    assert boxed_grader.stats.timeouts == 0


@pytest.mark.parametrize(
    ("response", "gold", "reward", "parsed"),
    [
        ("3+2=5\n#### 5", "5", 1.0, True),
        ("so 1,200 pens\n#### 1,200", "1200", 1.0, True),
        ("#### $18.", "18", 1.0, True),
        ("#### 18 dollars", "18", 1.0, True),
        ("4-7=-3\n#### -3", "-3", 1.0, True),
        ("#### 2.50", "2.5", 1.0, True),
        ("#### 5\nwait, no\n#### 6", "5", 0.0, True),  # only the last answer line counts
        ("#### 3/4 of them", "3", 0.0, True),  # not the number 3
        ("#### five", "5", 0.0, False),
        ("The answer is 5", "5", 0.0, False),  # strict: no '####', no reward
        ("5", "5", 0.0, False),
        ("\\boxed{5}", "5", 0.0, False),
    ],
)
def test_gsm8k_hash_answers(hash_grader, response, gold, reward, parsed):
    assert hash_grader.grade(response, gold) == Grade(reward, parsed)


def test_strict_mode_needs_the_task_marker(boxed_grader):
    assert boxed_grader.grade("The answer is 5.", "5") == Grade(0.0, parsed=False)
    assert boxed_grader.grade("5", "5") == Grade(0.0, parsed=False)
    lenient = Grader(["boxed", "answer_is"])
    assert lenient.grade("The answer is $5$.", "5") == Grade(1.0, parsed=True)
    assert lenient.grade("The final answer is: 12", "12") == Grade(1.0, parsed=True)
    assert lenient.grade("just 5", "5") == Grade(0.0, parsed=False)  # a bare number never counts


def test_extraction():
    assert last_boxed("a \\boxed{1} then \\boxed{\\frac{1}{2}} end") == "\\frac{1}{2}"
    assert last_boxed("\\boxed{\\{1, \\{2\\}\\}}") == "\\{1, \\{2\\}\\}"
    assert last_boxed("\\boxed{1} and an unclosed \\boxed{2") == "1"
    assert last_boxed("\\fbox{7}") == "7" and last_boxed("no box") is None
    assert extract_answer("#### 1,000 apples", ["hash"]) == "1,000"
    assert extract_answer("#### ", ["hash"]) is None
    assert extract_answer("\\boxed{}", ["boxed"]) is None
    assert extract_answer("The answer is \\boxed{3}", ["answer_is", "boxed"]) == "\\boxed{3}"
    assert quick_equivalence("1,000", "1000.00") is True and quick_equivalence("1/2", "0.5") is None


ADVERSARIAL = [
    ("\\boxed{10^{10^{10^{10}}}}", "1"),
    ("\\boxed{9^{9^{9^{9^{9}}}}}", "9"),
    ("\\boxed{" + "{" * 400 + "1" + "}" * 400 + "}", "1"),
    ("\\boxed{" + "\\frac{1}{" * 150 + "2" + "}" * 150 + "}", "2"),
    ("x" * 100_000, "1"),
    ("\\boxed{" + "1+" * 50_000 + "1}", "50001"),
    ("{" * 100_000 + "\\boxed{2}", "2"),
    ("\\boxed{" * 50_000, "1"),
]


@pytest.mark.parametrize(("response", "gold"), ADVERSARIAL, ids=range(len(ADVERSARIAL)))
def test_adversarial_answers_return_within_the_time_limit(boxed_grader, response, gold):
    start = time.monotonic()
    grade = boxed_grader.grade(response, gold)
    # Without the limit these would run for hours or exhaust memory. With it: the limit, plus killing the worker
    # and starting another, which took up to 8.5 s on a 2-core machine busy with a test suite beside (load 3.3).
    assert time.monotonic() - start < TIMEOUT_S + 20.0
    assert grade.reward in (0.0, 1.0)


def test_a_hung_worker_is_killed_replaced_and_counted(boxed_grader):
    timeouts = boxed_grader.stats.timeouts
    grades = boxed_grader.grade_batch([("\\boxed{10^{10^{10^{10}}}}", "3"), ("\\boxed{\\frac12}", "0.5")])
    assert grades == [Grade(0.0, parsed=True), Grade(1.0, parsed=True)]
    assert boxed_grader.stats.timeouts == timeouts + 1
    assert boxed_grader.grade("\\boxed{\\dfrac{3}{6}}", "1/2") == Grade(1.0, parsed=True)  # the replacement works


def test_a_dead_worker_is_replaced():
    with Grader(["boxed"], timeout_s=TIMEOUT_S, workers=1) as grader:
        grader.start()
        os.kill(grader._workers[0].process.pid, signal.SIGKILL)
        grader._workers[0].process.join()
        assert grader.grade("\\boxed{\\frac{2}{4}}", "0.5") == Grade(1.0, parsed=True)
