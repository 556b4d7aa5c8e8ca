"""The arithmetic task: split determinism and disjointness, gold solutions, and the grader."""

from __future__ import annotations

import pytest

from vineppo.config import ArithmeticConfig, TaskConfig
from vineppo.tasks import build_task
from vineppo.tasks.arithmetic import ArithmeticTask, solve
from vineppo.tasks.base import Grade

SMALL = ArithmeticConfig(num_ops=4, train_size=500, test_size=100, seed=7)


def test_split_is_deterministic_in_the_seed():
    a, b = ArithmeticTask(SMALL), ArithmeticTask(SMALL)
    assert a.train_problems() == b.train_problems()
    assert a.test_problems() == b.test_problems()
    other = ArithmeticTask(SMALL.model_copy(update={"seed": 8}))
    assert other.test_problems() != a.test_problems()


def test_test_set_does_not_depend_on_train_size():
    bigger = ArithmeticTask(SMALL.model_copy(update={"train_size": 700}))
    assert bigger.test_problems() == ArithmeticTask(SMALL).test_problems()


def test_split_sizes_ids_and_disjointness():
    task = ArithmeticTask(SMALL)
    train, test = task.train_problems(), task.test_problems()
    assert len(train) == 500 and len(test) == 100
    assert train[17].id == "arith-train-17" and test[3].id == "arith-test-3"
    train_prompts = {p.prompt for p in train}
    test_prompts = {p.prompt for p in test}
    assert len(train_prompts) == 500 and len(test_prompts) == 100
    assert not train_prompts & test_prompts


def test_exact_text_format():
    task = ArithmeticTask(SMALL)
    problem = task._problem("x", "5+3*4*5*7")
    assert problem.prompt == "5+3*4*5*7\n"
    assert problem.solution == "5+3=8\n8*4=2\n2*5=0\n0*7=0\n#0"
    assert problem.answer == "0"
    assert task._problem("x", "2-7+1").solution == "2-7=5\n5+1=6\n#6"


def test_solution_lines_recompute_to_the_answer():
    task = ArithmeticTask(SMALL)
    for problem in task.train_problems()[:200]:
        *steps, answer_line = problem.solution.split("\n")
        expression = problem.prompt.strip()
        assert len(steps) == SMALL.num_ops and answer_line == f"#{problem.answer}"
        value = int(expression[0])
        for i, line in enumerate(steps):
            left, op, right, eq, result = line
            assert (int(left), op, right, eq) == (value, expression[2 * i + 1], expression[2 * i + 2], "=")
            value = {"+": value + int(right), "-": value - int(right), "*": value * int(right)}[op] % 10
            assert int(result) == value
        assert value == int(problem.answer)
        assert set(problem.prompt + problem.solution) <= set(task.alphabet)


def test_answers_are_not_dominated_by_zero():
    answers = [p.answer for p in ArithmeticTask(SMALL).train_problems()]
    assert answers.count("0") / len(answers) < 0.2
    assert len(set(answers)) == 10


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("5+3=8\n8*4=2\n#2", Grade(1.0, True)),
        ("#2", Grade(1.0, True)),
        ("#2\n", Grade(1.0, True)),
        ("#02", Grade(1.0, True)),
        ("5+3=8\n#3", Grade(0.0, True)),
        ("#2\n#3", Grade(0.0, True)),  # only the last answer line counts
        ("#3\n#2", Grade(1.0, True)),
        ("#3\nsome trailing text", Grade(0.0, True)),
        ("5+3=8\n8*4=2", Grade(0.0, False)),
        ("", Grade(0.0, False)),
        ("#", Grade(0.0, False)),
        ("#2+0", Grade(0.0, False)),
        ("#__import__('os')", Grade(0.0, False)),
        ("#٢", Grade(0.0, False)),  # a non-ASCII digit is not an answer
        ("the answer is 2", Grade(0.0, False)),
        (" #2", Grade(0.0, False)),  # the line must start with '#'
        ("#2\n#x", Grade(0.0, False)),
    ],
)
def test_grade(response, expected):
    task = ArithmeticTask(SMALL)
    problem = task._problem("x", "5+3*4")  # answer 2
    assert task.grade(problem, response) == expected


def test_too_small_expression_space_is_a_clear_error():
    with pytest.raises(ValueError, match="distinct expressions"):
        ArithmeticTask(ArithmeticConfig(num_ops=1, max_operand=1, operators="+", train_size=10, test_size=2))


def test_build_task():
    assert isinstance(build_task(TaskConfig()), ArithmeticTask)


def test_teacher_demonstrations_err_only_on_its_misconceived_facts():
    cfg = ArithmeticConfig(num_ops=4, train_size=3000, test_size=8, teacher_error_facts=0.2, teacher_error_rate=0.6)
    task = ArithmeticTask(cfg)
    misconceptions = task._misconceptions()
    assert len(misconceptions) == round(0.2 * (10 * 10 + 10 * 10 + 10 * 9))
    gold, taught = task.train_problems(), task.sft_problems()
    assert [p.prompt for p in gold] == [p.prompt for p in taught]
    assert task.sft_problems() == taught  # deterministic
    wrong = seen = 0
    for problem in taught:
        value = int(problem.prompt[0])
        for line in problem.solution.split("\n")[:-1]:
            left, op, right, result = int(line[0]), line[1], int(line[2]), int(line[4])
            assert left == value  # the teacher carries on from what it wrote
            fact = (left, op, right)
            if fact in misconceptions:
                seen += 1
                assert result in (solve(f"{left}{op}{right}")[1], misconceptions[fact])
                wrong += result == misconceptions[fact]
            else:
                assert result == solve(f"{left}{op}{right}")[1]
            value = result
        assert problem.solution.endswith(f"#{value}")
    assert 0.5 < wrong / seen < 0.7
    assert all(task.grade(p, p.solution).reward == 1.0 for p in gold)


def test_no_misconceptions_means_gold_demonstrations():
    task = ArithmeticTask(ArithmeticConfig(num_ops=3, train_size=200, test_size=8, teacher_error_facts=0.0))
    assert task.sft_problems() == task.train_problems()
