"""The report: episodes as step records, the HTML page (escaped, self-contained), and `vineppo report`."""

import json

import pytest

from vineppo.cli import main
from vineppo.episodes import Episode
from vineppo.report.page import pick_iterations, write_report
from vineppo.report.samples import episode_record
from vineppo.tasks.base import Problem

CHARS = "abcdefghij\n"


def decode(ids):
    return "".join(CHARS[i] for i in ids)


def test_episode_record_by_hand():
    episode = Episode(0, Problem("p", "ab", "", "7"), [0, 1], [2, 3, 10, 4, 5], [0.0] * 5, "stop", reward=1.0)
    episode.step_starts = [0, 3]
    episode.step_values = [0.25, 0.5]
    episode.advantages = [0.25, 0.25, 0.25, 0.4, 0.6]  # the second step's tokens differ, as under GAE
    record = episode_record(episode, decode)
    assert record["prompt"] == "ab" and record["answer"] == "7" and record["reward"] == 1.0
    assert [s["text"] for s in record["steps"]] == ["cd\n", "ef"]
    assert [s["value"] for s in record["steps"]] == [0.25, 0.5]
    assert [s["advantage"] for s in record["steps"]] == pytest.approx([0.25, 0.5])


def test_a_method_without_credit_gives_one_step_without_value():
    episode = Episode(0, Problem("p", "a", "", "1"), [0], [2, 3], [0.0] * 2, "length", reward=0.0)
    record = episode_record(episode, decode)
    assert record["steps"] == [{"text": "cd", "value": None, "advantage": None}]


def test_pick_iterations_spreads_from_first_to_last():
    assert pick_iterations([1, 2, 3, 4, 5, 6, 7, 8, 9], 3) == [1, 5, 9]
    assert pick_iterations([1, 2], 3) == [1, 2]
    assert pick_iterations([1, 2, 3], 1) == [3]


def write_run(run, response_text):
    run.mkdir()
    (run / "config.yaml").write_text("algo:\n  name: vineppo\n  vineppo:\n    k: 9\nmodel:\n  path: tiny\n")
    metrics = [{"iteration": 0, "eval/accuracy": 0.5}, {"iteration": 1, "train/accuracy": 0.6, "loss/kl": 0.01}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    sample = {"iteration": 1, "prompt": "1+2\n", "answer": "3", "reward": 0.0, "finish_reason": "stop",
              "steps": [{"text": response_text, "value": 0.75, "advantage": -0.5}]}
    (run / "samples.jsonl").write_text(json.dumps(sample) + "\n")


def test_the_page_escapes_model_text_and_needs_no_other_file(tmp_path):
    run = tmp_path / "run"
    write_run(run, "<script>alert(1)</script>\n#3")
    page = write_report(run).read_text()
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "data:image/png;base64," in page and 'src="http' not in page
    assert "V(start) = 0.750 (MC estimate) · advantage -0.500" in page
    assert "vineppo · k 9" in page  # the method with its own options
    assert "rgba(215, 40, 40, 0.650)" in page  # the largest advantage shown, negative: full red
    assert (run / "report_curves.png").stat().st_size > 1000


@pytest.mark.slow
def test_vineppo_report_of_a_real_run(tmp_path_factory, algorithm_runs, capsys):
    run = tmp_path_factory.getbasetemp() / "run-ppo"  # written by the algorithm_runs fixture
    out = tmp_path_factory.mktemp("report") / "page.html"
    assert main(["report", str(run), "--output", str(out), "--iterations", "2"]) == 0
    page = out.read_text()
    assert "<h3>iteration 2</h3>" in page and "<h3>iteration 1</h3>" not in page
    assert "(value network)" in page
    assert (out.parent / "report_curves.png").is_file()


def test_report_of_a_directory_that_is_not_a_run(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "has no metrics.jsonl records" in capsys.readouterr().err
