"""Loaders and tasks for GSM8K and MATH: fixtures (malformed rows included) and the copies in ../shared/data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vineppo.config import GSM8KConfig, MATHConfig, load_config
from vineppo.data import DataError, load_problems
from vineppo.tasks import build_task
from vineppo.tasks.gsm8k import GSM8KTask
from vineppo.tasks.math import MathProblem, MATHTask
from vineppo.tasks.prompts import PLAIN_STOP, chat_prompt

FIXTURES = Path(__file__).parent / "fixtures"
SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
GOOD_GSM8K = json.loads((FIXTURES / "gsm8k_good.jsonl").read_text().splitlines()[0])


def gsm8k(source: Path | str, **overrides) -> GSM8KTask:
    return GSM8KTask(GSM8KConfig(train_source=str(source), test_source=str(source), **overrides))


def math_task(source: Path | str, **overrides) -> MATHTask:
    return MATHTask(MATHConfig(train_source=str(source), test_source=str(source), **overrides))


def write_jsonl(path: Path, lines: list) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


# ------------------------------------------------------------------------------------------------ GSM8K


def test_gsm8k_rows_become_problems_with_plain_prompts_and_hash_solutions():
    problems = gsm8k(FIXTURES / "gsm8k_good.jsonl").test_problems()
    assert [p.answer for p in problems] == ["5", "2400", "-3"]
    first = problems[0]
    assert first.prompt == f"[MATH_TASK] Problem:\n{GOOD_GSM8K['question']}\n\nSolution:"
    assert first.solution == "\nHe has 3+2=5 apples.\n#### 5"  # newline-led, calculator notes gone
    assert problems[1].solution.endswith("\nSo 2,400 pens.\n#### 2400")
    assert "<<" not in "".join(p.solution for p in problems)
    assert first.id == "gsm8k/test/1"
    assert PLAIN_STOP in gsm8k(FIXTURES / "gsm8k_good.jsonl").stop_sequences


@pytest.mark.parametrize(
    ("bad_line", "field", "why"),
    [
        ({"answer": "1+1=2\n#### 2"}, "question", "missing"),
        ({"question": "Q?", "answer": "no final line"}, "answer", "no '#### <number>'"),
        ({"question": "Q?", "answer": "x\n#### seven"}, "answer", "not a number: 'seven'"),
        ({"question": "", "answer": "#### 2"}, "question", "empty"),
        ({"question": ["Q?"], "answer": "#### 2"}, "question", "expected text, got list"),
        ('{"question": "broken", "answer": ', "(line)", "not valid JSON"),
        ('["not", "an", "object"]', "(row)", "expected a JSON object"),
    ],
)
def test_gsm8k_malformed_row_names_file_row_and_field(tmp_path, bad_line, field, why):
    path = write_jsonl(tmp_path / "test.jsonl", [GOOD_GSM8K, bad_line])
    with pytest.raises(DataError) as err:
        gsm8k(path).test_problems()
    message = str(err.value)
    assert str(path) in message and "row 2" in message and f"field '{field}'" in message and why in message


def test_gsm8k_skip_bad_rows_skips_and_counts():
    task = gsm8k(FIXTURES / "gsm8k_bad.jsonl", skip_bad_rows=True)
    assert [p.id for p in task.test_problems()] == ["gsm8k/test/1", "gsm8k/test/6"]
    assert task.skipped_rows == {"test": 4}
    with pytest.raises(DataError, match=r"gsm8k_bad.jsonl: row 2: field 'question': missing"):
        gsm8k(FIXTURES / "gsm8k_bad.jsonl").test_problems()


def test_gsm8k_json_array_parquet_and_directory_sources(tmp_path):
    import pyarrow
    import pyarrow.parquet

    from_array = gsm8k(FIXTURES / "gsm8k_array.json").test_problems()
    rows = [json.loads(line) for line in (FIXTURES / "gsm8k_good.jsonl").read_text().splitlines()]
    pyarrow.parquet.write_table(pyarrow.Table.from_pylist(rows), tmp_path / "test-00000-of-00001.parquet")
    write_jsonl(tmp_path / "train.jsonl", rows[:1])
    task = gsm8k(tmp_path)
    assert [p.answer for p in task.test_problems()] == [p.answer for p in from_array] == ["5", "2400", "-3"]
    assert [p.answer for p in task.train_problems()] == ["5"]  # only train* files for the train split
    (tmp_path / "only_train").mkdir()
    write_jsonl(tmp_path / "only_train" / "train.jsonl", rows)
    with pytest.raises(DataError, match="no 'test\\*' data file"):
        load_problems(str(tmp_path / "only_train"), "test", lambda row, row_id: row)


def test_missing_file_and_unsupported_type(tmp_path):
    with pytest.raises(DataError, match="no such file or directory"):
        gsm8k(tmp_path / "absent.jsonl").test_problems()
    (tmp_path / "rows.csv").write_text("question,answer\n")
    with pytest.raises(DataError, match="unsupported file type '.csv'"):
        gsm8k(tmp_path / "rows.csv").test_problems()


def test_hub_ids_go_through_datasets_load_dataset(monkeypatch):
    calls = []

    def fake_load_dataset(source, config, split):
        calls.append((source, config, split))
        if source == "nobody/missing":
            raise FileNotFoundError("Dataset 'nobody/missing' doesn't exist on the Hub")
        return [GOOD_GSM8K]

    monkeypatch.setattr("datasets.load_dataset", fake_load_dataset)
    task = GSM8KTask(GSM8KConfig())  # the defaults: openai/gsm8k, config main
    assert [p.answer for p in task.test_problems()] == ["5"]
    assert calls == [("openai/gsm8k", "main", "test")]
    with pytest.raises(DataError, match="nobody/missing: could not load split 'train'"):
        GSM8KTask(GSM8KConfig(train_source="nobody/missing")).train_problems()


def test_chat_format_is_a_pure_function_of_the_template():
    def template(messages, tokenize, add_generation_prompt):
        assert tokenize is False and add_generation_prompt is True
        return "".join(f"<|{m['role']}|>{m['content']}<|end|>" for m in messages) + "<|assistant|>"

    assert chat_prompt(template, "2+2?", "Think.") == "<|user|>2+2?\n\nThink.<|end|><|assistant|>"
    task = GSM8KTask(GSM8KConfig(test_source=str(FIXTURES / "gsm8k_good.jsonl"), prompt_format="chat"), template)
    problem = task.test_problems()[0]
    assert problem.prompt.startswith("<|user|>Tom has 3 apples") and problem.prompt.endswith("<|assistant|>")
    assert "#### <answer>" in problem.prompt and problem.solution.startswith("He has")
    assert task.stop_sequences == ()
    with pytest.raises(ValueError, match="needs the model's chat template"):
        GSM8KTask(GSM8KConfig(prompt_format="chat"))


# ------------------------------------------------------------------------------------------------ MATH


def test_math_rows_keep_boxed_solutions_and_metadata():
    problems = math_task(FIXTURES / "math_good.jsonl").test_problems()
    assert all(isinstance(p, MathProblem) for p in problems)
    assert [p.answer for p in problems] == ["\\frac{3}{4}", "2", "(-1, 1)"]  # answer field, else last \boxed
    assert [p.level for p in problems] == [1, 2, None]  # int, "Level 2", "Level ?"
    assert [p.subject for p in problems] == ["Prealgebra", "Algebra", None]  # subject, else the original "type"
    assert problems[0].id == "math/test/prealgebra/1.json" and problems[1].id == "math/test/2"
    assert problems[0].solution.startswith("\nWe have") and "\\boxed{\\frac{3}{4}}" in problems[0].solution


def test_math_malformed_rows_name_file_row_and_field():
    path = FIXTURES / "math_bad.jsonl"
    with pytest.raises(DataError, match=r"math_bad.jsonl: row 2: field 'solution': no \\boxed"):
        math_task(path).test_problems()
    task = math_task(path, skip_bad_rows=True)
    assert len(task.test_problems()) == 1
    assert task.skipped_rows == {"test": 5}  # rows 2, 3, 5, 6, 7; the blank row 4 is not a row


@pytest.mark.parametrize(
    ("bad_line", "field"),
    [({"solution": "\\boxed{1}"}, "problem"), ({"problem": "P", "solution": "\\boxed{1}", "answer": 1}, "answer")],
)
def test_math_bad_field_named(tmp_path, bad_line, field):
    path = write_jsonl(tmp_path / "rows.jsonl", [bad_line])
    with pytest.raises(DataError, match=f"rows.jsonl: row 1: field '{field}'"):
        math_task(path).test_problems()


def test_math_without_train_source_says_so():
    task = MATHTask(MATHConfig(test_source=str(FIXTURES / "math_good.jsonl")))
    assert len(task.test_problems()) == 3
    with pytest.raises(ValueError, match="task.math.train_source is not set"):
        task.train_problems()


# ------------------------------------------------------------------------------------------------ config, shared data


def test_build_task_picks_the_named_task_from_config():
    cfg = load_config(
        overrides=["task.name=math", f"task.math.test_source={FIXTURES / 'math_good.jsonl'}", "task.math.test_size=2"]
    )
    task = build_task(cfg.task)
    assert task.name == "math" and len(task.test_problems()) == 2
    cfg = load_config(overrides=["task.name=gsm8k", "task.gsm8k.grader.strict=false"])
    assert build_task(cfg.task).grader.markers == ("hash", "boxed", "answer_is")


@pytest.mark.skipif(not (SHARED / "gsm8k").is_dir(), reason="needs ../shared/data")
def test_shared_copies_load_completely():
    task = gsm8k(SHARED / "gsm8k")
    train, test = task.train_problems(), task.test_problems()
    assert (len(train), len(test)) == (7473, 1319)
    assert all(p.solution.split("\n")[-1] == f"#### {p.answer}" for p in train + test)
    math500 = MATHTask(MATHConfig(test_source=str(SHARED / "math500"))).test_problems()
    assert len(math500) == 500 and {p.level for p in math500} == {1, 2, 3, 4, 5}
    assert len({p.subject for p in math500}) == 7


def test_few_shot_examples_come_before_every_prompt():
    task = gsm8k(FIXTURES / "gsm8k_good.jsonl", few_shot=2)
    plain = gsm8k(FIXTURES / "gsm8k_good.jsonl")
    first, second = plain.train_problems()[:2]
    prefix = first.prompt + first.solution + "\n\n\n" + second.prompt + second.solution + "\n\n\n"
    for shot, zero in zip(task.test_problems(), plain.test_problems()):
        assert shot.prompt == prefix + zero.prompt and shot.solution == zero.solution
    assert "\n\n\n[MATH_TASK]" in task.stop_sequences  # a model that starts another problem stops there
    with pytest.raises(ValueError, match="few_shot needs prompt_format 'plain'"):
        GSM8KTask(GSM8KConfig(few_shot=1, prompt_format="chat"), lambda messages, **kw: "x")
