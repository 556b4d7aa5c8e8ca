"""The forks task (vineppo.tasks.forks): its generator and its grader, by hand and on every generated problem."""

import itertools
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vineppo.config import ConfigError, ForksConfig, load_config
from vineppo.tasks.arithmetic import FallibleTeacher, apply_op
from vineppo.tasks.base import Problem
from vineppo.tasks.forks import FILLERS, ForksTask, parse_prompt

CFG = ForksConfig(train_size=300, test_size=40)
TASK = ForksTask(CFG)
PROBLEM = Problem("p", "A+3B[*2|-5]C+1 4>3\n", "", "3")  # 4+3=7; *2 -> 4, -5 -> 2; +1 -> 5 or 3: only -5 reaches 3


def end_values(start, steps):
    """Every value some choice at the forks ends on, by brute force over the choices."""
    forks = [i for i, options in enumerate(steps) if len(options) == 2]
    values = set()
    for choice in itertools.product((0, 1), repeat=len(forks)):
        value, picks = start, dict(zip(forks, choice))
        for i, options in enumerate(steps):
            value = apply_op(value, *options[picks.get(i, 0)])
        values.add(value)
    return values


def test_problems_have_the_configured_shape_and_a_reachable_target():
    problems = TASK.train_problems() + TASK.test_problems()
    assert len({p.prompt for p in problems}) == len(problems)  # distinct, train and test disjoint
    for problem in problems:
        start, steps, target = parse_prompt(problem.prompt)
        assert len(steps) == 10 and sum(len(o) == 2 for o in steps) == 2
        assert target in end_values(start, steps) and problem.answer == str(target)
        assert all(op != "*" or operand != 0 for options in steps for op, operand in options)
    assert ForksTask(CFG).test_problems() == TASK.test_problems()  # deterministic


def test_steps_are_labelled_in_order_in_the_prompt_and_in_their_lines():
    problem = TASK.test_problems()[0]
    labels = [line.split(" ")[-1][1] for line in problem.solution.split("\n")[:-1]]
    assert labels == list("ABCDEFGHIJ") and all(label in problem.prompt for label in labels)
    assert parse_prompt("A+3B[*2|-5]C+1 4>3") == (4, [[("+", 3)], [("*", 2), ("-", 5)], [("+", 1)]], 3)
    for wrong in ("A+3C[*2|-5]B+1 4>3", "+3[*2|-5]+1 4>3", "A+3A[*2|-5]C+1 4>3", "4A+3B[*2|-5]C+1>3"):
        with pytest.raises(ValueError, match="not a forks prompt"):
            parse_prompt(wrong)


def test_a_fork_line_restates_the_fork_as_the_prompt_writes_it():
    problem = TASK.test_problems()[0]
    _, steps, _ = parse_prompt(problem.prompt)
    for options, line in zip(steps, problem.solution.split("\n")):
        if len(options) == 2:
            (a, x), (b, y) = options
            assert f"[{a}{x}|{b}{y}]" in line and f"[{a}{x}|{b}{y}]" in problem.prompt


def test_every_fork_is_a_real_choice_on_the_gold_path():
    for problem in TASK.test_problems():
        start, steps, _ = parse_prompt(problem.prompt)
        lines = problem.solution.split("\n")[:-1]
        value = start
        for options, line in zip(steps, lines):
            if len(options) == 2:
                assert apply_op(value, *options[0]) != apply_op(value, *options[1])
            value = int(line[-1])


def test_gold_solutions_score_1_and_carry_one_filler_word_per_line():
    for problem in TASK.test_problems():
        assert TASK.grade(problem, problem.solution).reward == 1.0 and TASK.first_error(problem, problem.solution) is None
        lines = problem.solution.split("\n")
        assert len(lines) == 11 and lines[-1] == f"#{problem.answer}"
        assert all(line.split(" ")[0] in FILLERS and line.count(" ") == 1 for line in lines[:-1])
    words = [line.split(" ")[0] for p in TASK.train_problems() for line in p.solution.split("\n")[:-1]]
    assert {w: words.count(w) / len(words) for w in FILLERS} == pytest.approx(dict.fromkeys(FILLERS, 0.25), abs=0.03)


def test_the_teacher_takes_the_gold_path_and_errs_only_on_its_misconceived_facts():
    taught = TASK.sft_problems()
    assert taught == ForksTask(CFG).sft_problems()  # deterministic
    wrong_facts = FallibleTeacher(CFG).misconceptions
    slips = 0
    for gold, teacher in zip(TASK.train_problems(), taught):
        value = parse_prompt(gold.prompt)[0]
        for gold_line, line in zip(gold.solution.split("\n")[:-1], teacher.solution.split("\n")[:-1]):
            equation, gold_equation = line.split(" ")[-1], gold_line.split(" ")[-1]
            assert equation[1:-4] == gold_equation[1:-4] and equation[-4:-2] == gold_equation[-4:-2]  # same choice
            left, op, right, result = int(equation[0]), equation[-4], int(equation[-3]), int(equation[-1])
            assert left == value  # it carries on from what it wrote
            if result != apply_op(left, op, right):
                assert wrong_facts[(left, op, right)] == result
                slips += 1
            value = result
        assert teacher.solution.endswith(f"#{value}")
    assert slips > 0


def solution(*lines, answer="3"):
    return "\n".join([*lines, f"#{answer}"])


@pytest.mark.parametrize(("response", "reward", "parsed", "why"), [
    (solution("so 4A+3=7", "then 7B[*2|-5]-5=2", "ok 2C+1=3"), 1.0, True, None),
    (solution("4A+3=7", "7B[*2|-5]-5=2", "2C+1=3"), 1.0, True, None),  # no fillers: fine
    (solution("so then now 4A+3=7", "7B[*2|-5]-5=2", "ok 2C+1=3"), 1.0, True, None),  # several: fine
    (solution("so 4A+3=7", "then 7B[*2|-5]-5=2", "ok 2C+1=3") + "\n", 1.0, True, None),  # a trailing newline
    (solution("so 4A+3=7", "then 7B[*2|-5]*2=4", "ok 4C+1=5", answer="5"), 0.0, True, "dead end"),  # the other branch
    (solution("so 4A+3=7", "then 7B[*2|-5]*2=4", "ok 4C+1=5"), 0.0, True, "answer line"),  # the target claimed anyway
    (solution("so 4A+3=7", "then 7B[*2|-5]-5=2", "ok 2C+1=4", answer="4"), 0.0, True, "line 3: arithmetic"),
    (solution("so 4A+3=7", "then 7B[*2|-4]-4=3", "ok 3C+0=3"), 0.0, True, "line 2: fork"),  # not the problem's fork
    (solution("so 4A+3=7", "then 7B-5=2", "ok 2C+1=3"), 0.0, True, "line 2: fork"),  # a fork not restated
    (solution("so 4A[*2|-5]+3=7", "then 7B[*2|-5]-5=2", "ok 2C+1=3"), 0.0, True, "line 1: fork"),  # a fixed step as a fork
    (solution("so 4A+3=7", "then 7B[*2|-5]+5=2", "ok 2C+1=3"), 0.0, True, "line 2: operation"),  # neither alternative
    (solution("so 4A+3=7", "then 7C[*2|-5]-5=2", "ok 2C+1=3"), 0.0, True, "line 2: label"),  # a step's wrong label
    (solution("so 4+3=7", "then 7[*2|-5]-5=2", "ok 2+1=3"), 0.0, True, "line 1: malformed"),  # no labels
    (solution("so 4A+3=7", "then 7B[*2|-5]-5=2"), 0.0, True, "line 3: missing"),  # a step missing
    (solution("so 4A+3=7", "then 7B[*2|-5]-5=2", "ok 2C+1=3", "ok 3D+0=3"), 0.0, True, "extra lines"),
    (solution("so 5A+3=8", "then 8B[*2|-5]-5=3", "ok 3C+0=3"), 0.0, True, "line 1: carry"),  # the wrong start
    (solution("hmm 4A+3=7", "then 7B[*2|-5]-5=2", "ok 2C+1=3"), 0.0, True, "line 1: malformed"),  # not a filler
    ("#3", 0.0, True, "line 1: missing"),  # the target alone: it is in the prompt
    ("so 4A+3=7\nthen 7B[*2|-5]-5=2\nok 2C+1=3", 0.0, False, "no answer line"),
    ("so 4A+3=7\nthen 7B[*2|-5]-5=2\nok 2C+1=3\n#x", 0.0, False, "no answer line"),
])
def test_the_grader_and_its_first_error_by_hand(response, reward, parsed, why):
    grade = TASK.grade(PROBLEM, response)
    assert (grade.reward, grade.parsed) == (reward, parsed)
    assert TASK.first_error(PROBLEM, response) == why
    assert TASK.extract_answer(response) == (response.rstrip().split("#")[-1] if parsed else None)


@settings(max_examples=300)
@given(st.text(max_size=300))
def test_the_grader_gives_0_or_1_quickly_on_any_string(response):
    started = time.perf_counter()
    grade = TASK.grade(TASK.test_problems()[0], response)
    assert grade.reward in (0.0, 1.0) and (grade.parsed or grade.reward == 0.0)
    assert (TASK.first_error(TASK.test_problems()[0], response) is None) == (grade.reward == 1.0)
    assert time.perf_counter() - started < 1.0  # microseconds normally; a busy machine may pause the process


def test_the_config_and_the_tiny_model_accept_the_task(tmp_path):
    cfg = load_config("configs/forks.yaml")
    assert (cfg.task.name, cfg.task.forks.num_steps, cfg.task.forks.num_forks) == ("forks", 10, 2)
    with pytest.raises(ConfigError, match="num_forks .4. cannot exceed num_steps .3."):
        load_config(None, ["task.name=forks", "task.forks.num_steps=3", "task.forks.num_forks=4"])
    assert set(ForksTask.alphabet) >= set("".join(p.prompt + p.solution for p in TASK.test_problems()))
    # room for every solution (one token a character, then eos) after its prompt and bos
    longest = max(len(p.solution) for p in TASK.train_problems()) + 1
    assert longest <= cfg.engine.max_new_tokens
    assert 1 + max(len(p.prompt) for p in TASK.train_problems()) + cfg.engine.max_new_tokens <= \
        cfg.model.tiny.max_position_embeddings
