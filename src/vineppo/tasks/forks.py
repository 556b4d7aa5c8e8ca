"""The second built-in task, made for credit assignment: long chains with forks, whose dead ends show only at the
end, written with free filler words (docs/tasks.md says why each part is there).

A problem is `num_steps` steps named A, B, C, ..., then a start digit and a target. Most steps are fixed (`+3`);
`num_forks` of them, at random positions, offer two alternatives (`[*2|-5]`). Every value is a digit, each step
computed left to right modulo 10 as in the arithmetic task. The response takes one line per step, choosing one
alternative at a fork, and must end on the target:

    A+3B[*2|-5]C+1D-6E+4F*7G-2H[-1|*9]I+5J+1 4>0    <- prompt (followed by a newline): steps, start>target
    so 4A+3=7
    then 7B[*2|-5]-5=2                               <- a fork, restated, then the choice: *2 would also be
    ...                                                 legal, but leads elsewhere
    #0

A line names its step and restates a fork as the prompt writes it before choosing, so that every line is found by
copying what follows its label in the prompt, and the start comes last in the prompt, next to the first line that
copies it (without labels, and with the start first, the tiny model's SFT stayed at 0-10% accuracy for
1,000-2,000 steps; copying an operation is still its most common mistake, docs/tasks.md). Each line may start
with filler words (`so`, `then`, `now`, `ok`, separated by spaces): the teacher writes `filler_words` of them,
drawn at random, so they are free tokens that do not matter for the reward, as phrasing is in GSM8K. The target is the end of one path through the forks
(drawn with the problem), so at least one choice at every fork reaches it; a wrong choice is a dead end that only
shows in the final value. Arithmetic slips (the teacher's misconceptions, tasks/arithmetic.FallibleTeacher, and
the model's own) are independent chances to go wrong on every line.

Grading is exact and evaluates nothing: the reward is 1 iff the response is `num_steps` step lines, each legal at
its position (its label, its left operand the value so far, its operation the fixed one or one of the fork's two,
its result right, a fork restated as the prompt has it), then `#<target>`; otherwise 0. Only the answer line
decides `parsed`. The target being in the prompt, the trace is checked, not just the answer.
"""

from __future__ import annotations

import random
import re

from vineppo.config import ForksConfig
from vineppo.tasks.arithmetic import FallibleTeacher, apply_op
from vineppo.tasks.base import Grade, Problem

FILLERS = ("so", "then", "now", "ok")
LABELS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"  # step i is named LABELS[i], in the prompt and in its line
_STEP = re.compile(r"([A-Z])(?:\[([+\-*])([0-9])\|([+\-*])([0-9])\]|([+\-*])([0-9]))")
_PROMPT = re.compile(r"((?:[A-Z](?:\[[+\-*][0-9]\|[+\-*][0-9]\]|[+\-*][0-9]))+) ([0-9])>([0-9])")
_LINE = re.compile(
    r"(?:(?:" + "|".join(FILLERS) + r") )*([0-9])([A-Z])(\[[+\-*][0-9]\|[+\-*][0-9]\])?([+\-*])([0-9])=([0-9])"
)
_ANSWER = re.compile(r"#(-?[0-9]+)")

Step = list[tuple[str, int]]  # the legal (operator, operand) pairs of a step: one, or two at a fork


def parse_prompt(prompt: str) -> tuple[int, list[Step], int]:
    """(start, steps, target) of a prompt this task wrote."""
    match = _PROMPT.fullmatch(prompt.strip())
    if match is None:
        raise ValueError(f"not a forks prompt: {prompt!r}")
    steps = []
    for label, fork_a, a, fork_b, b, op, operand in _STEP.findall(match.group(1)):
        if label != LABELS[len(steps)]:
            raise ValueError(f"not a forks prompt: step {len(steps) + 1} is labelled {label!r}: {prompt!r}")
        steps.append([(fork_a, int(a)), (fork_b, int(b))] if fork_a else [(op, int(operand))])
    return int(match.group(2)), steps, int(match.group(3))


def fork_text(options: Step) -> str:
    """How a line restates a fork before its choice (`[*2|-5]`, as in the prompt); nothing for a fixed step."""
    return f"[{options[0][0]}{options[0][1]}|{options[1][0]}{options[1][1]}]" if len(options) == 2 else ""


class ForksTask:
    """Chains with forks; a deterministic, disjoint train/test split drawn from `cfg.seed`."""

    name = "forks"
    alphabet = "0123456789+-*=#\n[|]> " + LABELS + "".join(sorted(set("".join(FILLERS))))
    """Every character a prompt or solution uses (the tiny model's tokenizer is built from it)."""

    stop_sequences: tuple[str, ...] = ()

    def __init__(self, cfg: ForksConfig) -> None:
        self.cfg = cfg
        rng = random.Random(cfg.seed)
        test = self._draw(rng, cfg.test_size, exclude=set())
        train = self._draw(rng, cfg.train_size, exclude={p for p, _ in test})
        self._test = [self._problem(f"forks-test-{i}", p, path) for i, (p, path) in enumerate(test)]
        self._train = [self._problem(f"forks-train-{i}", p, path) for i, (p, path) in enumerate(train)]
        self._train_paths = [path for _, path in train]  # the fork choices of each gold solution

    def _operation(self, rng: random.Random) -> tuple[str, int]:
        op = rng.choice(self.cfg.operators)
        return op, rng.randint(1 if op == "*" else 0, self.cfg.max_operand)  # no *0: it would absorb the chain

    def _draw(self, rng: random.Random, count: int, exclude: set[str]) -> list[tuple[str, list[int]]]:
        """`count` distinct prompts not in `exclude`, each with the fork choices (0 or 1) of its target's path. At
        each fork the two alternatives give different values from the path's value there: a real choice."""
        cfg = self.cfg
        drawn: dict[str, list[int]] = {}
        attempts = 0
        while len(drawn) < count:
            attempts += 1
            if attempts > 100 * count + 10_000:
                raise ValueError(f"task.forks: could not draw {count} distinct problems (found {len(drawn)})")
            start = value = rng.randint(0, 9)
            forks = set(rng.sample(range(cfg.num_steps), cfg.num_forks))
            text, path = "", []
            for i in range(cfg.num_steps):
                first = self._operation(rng)
                text += LABELS[i]
                if i not in forks:
                    text += f"{first[0]}{first[1]}"
                    value = apply_op(value, *first)
                    continue
                second = self._operation(rng)
                while apply_op(value, *second) == apply_op(value, *first):
                    second = self._operation(rng)
                text += fork_text([first, second])
                path.append(rng.randint(0, 1))
                value = apply_op(value, *(first, second)[path[-1]])
            text += f" {start}>{value}"
            if text not in exclude and text not in drawn:
                drawn[text] = path
        return list(drawn.items())

    def _solution(self, prompt: str, path: list[int], apply, rng: random.Random) -> str:
        """The lines along `path` (fork choices), each result from `apply` and `filler_words` drawn by `rng` in
        front, then the answer line: the value it ended on."""
        value, steps, _ = parse_prompt(prompt)
        choices = iter(path)
        lines = []
        for label, options in zip(LABELS, steps):
            op, operand = options[next(choices) if len(options) == 2 else 0]
            result = apply(value, op, operand)
            fillers = "".join(f"{rng.choice(FILLERS)} " for _ in range(self.cfg.filler_words))
            lines.append(f"{fillers}{value}{label}{fork_text(options)}{op}{operand}={result}\n")
            value = result
        return "".join(lines) + f"#{value}"

    def _problem(self, problem_id: str, prompt: str, path: list[int]) -> Problem:
        solution = self._solution(prompt, path, apply_op, random.Random(f"{self.cfg.seed}-{problem_id}"))
        return Problem(id=problem_id, prompt=prompt + "\n", solution=solution, answer=prompt.rsplit(">", 1)[1])

    def train_problems(self) -> list[Problem]:
        return list(self._train)

    def sft_problems(self) -> list[Problem]:
        """The training problems with the fallible teacher's solutions: it takes the target's path, writes random
        filler words, and slips on its misconceived facts (then carries on from what it wrote, so its answer line
        may miss the target)."""
        teacher = FallibleTeacher(self.cfg)
        rng = random.Random(f"{self.cfg.seed}-teacher-fillers")
        return [
            Problem(p.id, p.prompt, self._solution(p.prompt, path, teacher, rng), p.answer)
            for p, path in zip(self._train, self._train_paths)
        ]

    def test_problems(self) -> list[Problem]:
        return list(self._test)

    def grade(self, problem: Problem, response: str) -> Grade:
        """1.0 iff the response is a legal trace ending on the target (see the module docstring)."""
        parsed = self.extract_answer(response) is not None
        return Grade(1.0 if parsed and self.first_error(problem, response) is None else 0.0, parsed=parsed)

    def first_error(self, problem: Problem, response: str) -> str | None:
        """Why the response scores 0: its first failing check, as `line <n>: <check>` (check: missing, malformed,
        label, carry, fork, operation, arithmetic) or one of `no answer line`, `extra lines`, `answer line` (not
        the value reached), `dead end` (a legal trace that misses the target); None if it scores 1."""
        answer = self.extract_answer(response)
        if answer is None:
            return "no answer line"
        value, steps, target = parse_prompt(problem.prompt)
        lines = response.rstrip().split("\n")[:-1]
        for n, (label, options) in enumerate(zip(LABELS, steps), start=1):
            match = _LINE.fullmatch(lines[n - 1]) if n <= len(lines) else None
            if match is None:
                return f"line {n}: {'missing' if n > len(lines) else 'malformed'}"
            left, op, operand, result = int(match.group(1)), match.group(4), int(match.group(5)), int(match.group(6))
            check = next((name for name, failed in (
                ("label", match.group(2) != label),
                ("carry", left != value),  # the left operand is not the value so far
                ("fork", (match.group(3) or "") != fork_text(options)),
                ("operation", (op, operand) not in options),
                ("arithmetic", result != apply_op(left, op, operand)),
            ) if failed), None)
            if check is not None:
                return f"line {n}: {check}"
            value = result
        if len(lines) > len(steps):
            return "extra lines"
        if int(answer) != value:
            return "answer line"
        return "dead end" if value != target else None

    def grade_batch(self, problems: list[Problem], responses: list[str]) -> list[Grade]:
        return [self.grade(p, r) for p, r in zip(problems, responses)]

    def extract_answer(self, response: str) -> str | None:
        """The last line's `#<integer>`, if the response ends on one."""
        match = _ANSWER.fullmatch(response.rstrip().split("\n")[-1].strip())
        return str(int(match.group(1))) if match else None
