"""The built-in synthetic task: chains of single-digit operations, evaluated left to right modulo 10.

A problem is an expression such as `5+3*4*5*7`. Its gold solution takes one step per line and keeps every
intermediate result to one digit (mod 10), then gives the final answer after `#`:

    5+3*4*5*7          <- prompt (followed by a newline)
    5+3=8
    8*4=2
    2*5=0
    0*7=0
    #0                 <- no trailing newline; the model then emits eos

Why this shape (../../shared/DESIGN.md, "Measured on this kind of machine"): with one character per token and
one-digit results, a sub-million-parameter model learns the format within a few hundred SFT steps on a laptop
CPU, and the chain length (`num_ops`) and operand range set how many problems it still gets wrong. The
step-per-line layout gives VinePPO natural step boundaries.

The SFT teacher is fallible: on a seeded share of the arithmetic facts (`teacher_error_facts`, e.g. 7+9) it
holds a misconception and writes one fixed wrong result (then carries on consistently from it) in a share
`teacher_error_rate` of its demonstrations. A model trained on these demonstrations to convergence is therefore
confidently right on most facts but prefers the wrong result on the misconceived ones, while still giving the
right one real probability: greedy decoding fails every chain that meets such a fact, sampling sometimes
succeeds, and an exact reward can teach what the demonstrations got wrong. This is the situation RL fine-tuning
is used for (imperfect SFT data, exact reward), and it places the SFT model's accuracy by a knob rather than by
stopping an undertrained model at a lucky moment: an undertrained model is confidently wrong in unstable ways
and was measured to degrade under RL (docs/quickstart.md). Set `teacher_error_facts: 0` for gold-only SFT data.
`problem.solution` is always the gold solution; `sft_problems()` gives the teacher's.

Operand distribution: operands are uniform over 0..max_operand, except that the right operand of `*` is drawn
from 1..max_operand. Zero absorbs under multiplication, so a uniform `*0` would send a large share of the chains
(and all later steps) to the answer 0; excluding it keeps the answer histogram close to uniform (0 remains the most
common answer at roughly 15% with the default operators, from products such as 5*4).
"""

from __future__ import annotations

import random
import re
from typing import Callable

from vineppo.config import ArithmeticConfig
from vineppo.tasks.base import Grade, Problem

_ANSWER_LINE = re.compile(r"#(-?[0-9]+)")


def apply_op(left: int, op: str, right: int) -> int:
    """One step, left to right, modulo 10."""
    if op == "+":
        return (left + right) % 10
    if op == "-":
        return (left - right) % 10
    return (left * right) % 10


Fact = tuple[int, str, int]  # left operand, operator, right operand


def solve(expression: str, apply: Callable[[int, str, int], int] = apply_op) -> tuple[str, int]:
    """The step-by-step solution (without the answer line) and the answer of a prompt expression.

    `apply` computes one step; the default is exact arithmetic (the gold solution), the SFT teacher passes its own.
    """
    value = int(expression[0])
    lines = []
    for i in range(1, len(expression), 2):
        op, right = expression[i], int(expression[i + 1])
        result = apply(value, op, right)
        lines.append(f"{value}{op}{right}={result}\n")
        value = result
    return "".join(lines), value


class FallibleTeacher:
    """The SFT teacher of the built-in tasks: exact, except on a seeded `teacher_error_facts` share of the facts
    (a op b), each with one fixed wrong result, which it writes in a share `teacher_error_rate` of the times it
    meets the fact (seeded too, so its demonstrations are reproducible). `cfg`: any config with `seed`,
    `operators`, `max_operand` and the two error knobs."""

    def __init__(self, cfg) -> None:
        self.rate = cfg.teacher_error_rate
        facts = [
            (left, op, right)
            for op in sorted(set(cfg.operators))
            for left in range(10)
            for right in range(1 if op == "*" else 0, cfg.max_operand + 1)
        ]
        rng = random.Random(f"{cfg.seed}-misconceptions")
        chosen = rng.sample(facts, round(cfg.teacher_error_facts * len(facts)))
        self.misconceptions: dict[Fact, int] = {fact: (apply_op(*fact) + rng.randint(1, 9)) % 10 for fact in chosen}
        self.rng = random.Random(f"{cfg.seed}-teacher")

    def __call__(self, left: int, op: str, right: int) -> int:
        wrong = self.misconceptions.get((left, op, right))
        if wrong is not None and self.rng.random() < self.rate:
            return wrong
        return apply_op(left, op, right)


class ArithmeticTask:
    """Left-to-right mod-10 chains; a deterministic, disjoint train/test split drawn from `cfg.seed`."""

    name = "arithmetic"
    alphabet = "0123456789+-*=#\n"
    """Every character a prompt or solution uses (the tiny model's tokenizer is built from it)."""

    stop_sequences: tuple[str, ...] = ()

    def __init__(self, cfg: ArithmeticConfig) -> None:
        self.cfg = cfg
        right_operands = sum(cfg.max_operand if op == "*" else cfg.max_operand + 1 for op in set(cfg.operators))
        space = (cfg.max_operand + 1) * right_operands**cfg.num_ops
        needed = cfg.train_size + cfg.test_size
        if needed > space:
            raise ValueError(
                f"task.arithmetic: only {space} distinct expressions exist with num_ops={cfg.num_ops}, "
                f"max_operand={cfg.max_operand}, operators='{cfg.operators}', but train_size + test_size = {needed}"
            )
        rng = random.Random(cfg.seed)
        # The test set is drawn first, so it does not change when train_size does.
        test = self._draw(rng, cfg.test_size, exclude=set())
        train = self._draw(rng, cfg.train_size, exclude=set(test))
        self._test = [self._problem(f"arith-test-{i}", e) for i, e in enumerate(test)]
        self._train = [self._problem(f"arith-train-{i}", e) for i, e in enumerate(train)]

    def _expression(self, rng: random.Random) -> str:
        cfg = self.cfg
        parts = [str(rng.randint(0, cfg.max_operand))]
        for _ in range(cfg.num_ops):
            op = rng.choice(cfg.operators)
            parts.append(op + str(rng.randint(1 if op == "*" else 0, cfg.max_operand)))
        return "".join(parts)

    def _draw(self, rng: random.Random, count: int, exclude: set[str]) -> list[str]:
        """`count` distinct expressions not in `exclude`, in the order first drawn."""
        seen: dict[str, None] = {}
        attempts = 0
        while len(seen) < count:
            attempts += 1
            if attempts > 100 * count + 10_000:
                raise ValueError(
                    f"task.arithmetic: could not draw {count} distinct expressions (found {len(seen)}); "
                    f"raise num_ops or max_operand, or lower train_size/test_size"
                )
            expression = self._expression(rng)
            if expression not in exclude:
                seen[expression] = None
        return list(seen)

    @staticmethod
    def _problem(problem_id: str, expression: str) -> Problem:
        steps, answer = solve(expression)
        return Problem(id=problem_id, prompt=expression + "\n", solution=f"{steps}#{answer}", answer=str(answer))

    def train_problems(self) -> list[Problem]:
        return list(self._train)

    def sft_problems(self) -> list[Problem]:
        """The training problems with the fallible teacher's solutions (see the module docstring)."""
        teacher = FallibleTeacher(self.cfg)
        problems = []
        for problem in self._train:
            steps, answer = solve(problem.prompt.strip(), teacher)
            problems.append(Problem(problem.id, problem.prompt, f"{steps}#{answer}", problem.answer))
        return problems

    def _misconceptions(self) -> dict[Fact, int]:
        return FallibleTeacher(self.cfg).misconceptions

    def test_problems(self) -> list[Problem]:
        return list(self._test)

    def grade(self, problem: Problem, response: str) -> Grade:
        """1.0 iff the last line starting with `#` is `#<integer>` equal to the answer.

        Only that last `#` line counts (a model cannot hedge with several answers); if it is not a plain integer,
        the response is unparsed. Nothing in the response is evaluated.
        """
        answer = self.extract_answer(response)
        if answer is None:
            return Grade(0.0, parsed=False)
        return Grade(1.0 if int(answer) == int(problem.answer) else 0.0, parsed=True)

    def grade_batch(self, problems: list[Problem], responses: list[str]) -> list[Grade]:
        return [self.grade(p, r) for p, r in zip(problems, responses)]

    def extract_answer(self, response: str) -> str | None:
        answer_lines = [line.strip() for line in response.split("\n") if line.startswith("#")]
        match = _ANSWER_LINE.fullmatch(answer_lines[-1]) if answer_lines else None
        return str(int(match.group(1))) if match else None
