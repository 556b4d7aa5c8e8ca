"""Evaluation: pass@1, pass@k and maj@k by hand, per-subject/level breakdowns, and `vineppo eval --samples`."""

import argparse
import json
from pathlib import Path

import pytest

from tiny import TINY

from vineppo.cli import _load, main
from vineppo.config import load_config
from vineppo.evaluate import SampledResult, sampled_metrics
from vineppo.sft import ensure_sft_model
from vineppo.tasks.math import MathProblem


def test_pass_and_majority_by_hand():
    result = SampledResult("p", rewards=[0.0, 1.0, 0.0, 0.0], answers=["7", "5", "7", None])
    assert result.pass_at_1 == 0.25 and result.pass_at_k == 1.0
    assert result.majority == 0.0  # "7" (twice, wrong) outvotes "5" (once, right)
    tie = SampledResult("q", rewards=[1.0, 0.0], answers=["5", "7"])
    assert tie.majority == 1.0  # a tie goes to the answer seen first
    assert SampledResult("r", rewards=[0.0, 0.0], answers=[None, None]).majority == 0.0


def test_sampled_metrics_break_down_by_subject_and_level():
    problems = [MathProblem(f"m{i}", "", "", "1", level=level, subject=subject)
                for i, (level, subject) in enumerate([(1, "algebra"), (1, "geometry"), (2, "algebra")])]
    results = [SampledResult("m0", [1.0, 1.0], ["1", "1"]), SampledResult("m1", [0.0, 1.0], ["2", "1"]),
               SampledResult("m2", [0.0, 0.0], ["3", "3"])]
    metrics = sampled_metrics(problems, results, k=2)
    assert metrics["eval/pass@1"] == pytest.approx((1.0 + 0.5 + 0.0) / 3)
    assert metrics["eval/pass@2"] == pytest.approx(2 / 3)
    assert metrics["eval/maj@2"] == pytest.approx(1 / 3)  # m1's tie goes to "2", seen first, which is wrong
    assert metrics["eval/subject/algebra/pass@1"] == pytest.approx(0.5)
    assert metrics["eval/subject/geometry/problems"] == 1
    assert metrics["eval/level/1/pass@2"] == 1.0 and metrics["eval/level/2/pass@2"] == 0.0


@pytest.mark.slow
def test_eval_with_samples_writes_metrics_and_per_problem_results(tmp_path, sft_cache, capsys):
    model = ensure_sft_model(load_config(None, TINY))
    out = tmp_path / "eval.json"
    assert main(["eval", "--model", str(model), "--samples", "3", "--output", str(out), *TINY]) == 0
    assert "pass@1" in capsys.readouterr().err
    record = json.loads(out.read_text())
    metrics, problems = record["metrics"], record["problems"]
    assert record["samples"] == 3 and len(problems) == metrics["eval/problems"] == 8  # TINY's test set
    assert all(len(p["rewards"]) == len(p["answers"]) == 3 for p in problems)
    pass_at_1 = sum(sum(p["rewards"]) / 3 for p in problems) / len(problems)
    assert metrics["eval/pass@1"] == pytest.approx(pass_at_1)
    assert metrics["eval/pass@1"] <= metrics["eval/pass@3"]
    assert main(["eval", "--model", str(model), "--samples", "-1", *TINY]) == 2


BAD_ROWS = Path(__file__).parent / "fixtures" / "gsm8k_bad.jsonl"


def test_a_malformed_data_row_stops_with_one_line_naming_file_row_and_field(tmp_path, sft_cache, capsys):
    model = ensure_sft_model(load_config(None, TINY))
    args = ["eval", "--model", str(model), *TINY, "task.name=gsm8k", f"task.gsm8k.test_source={BAD_ROWS}"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "gsm8k_bad.jsonl: row 2: field 'question': missing" in err and "Traceback" not in err


def test_skip_bad_rows_flag_sets_the_tasks_key(capsys):
    args = argparse.Namespace(skip_bad_rows=True)
    assert _load(args, None, ["task.name=gsm8k"]).task.gsm8k.skip_bad_rows is True
    assert _load(argparse.Namespace(skip_bad_rows=False), None, ["task.name=gsm8k"]).task.gsm8k.skip_bad_rows is False
    assert main(["train", "--skip-bad-rows"]) == 2
    assert "--skip-bad-rows: task 'arithmetic' reads no data files" in capsys.readouterr().err
