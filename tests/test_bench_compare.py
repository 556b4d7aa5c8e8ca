"""The comparison benchmark: its table by hand, and a tiny run writing every output."""

import json

import pytest

from tiny import TINY

from vineppo.bench.compare import run_specs, table
from vineppo.cli import main
from vineppo.runlog import read_metrics


def test_table_by_hand():
    results = {
        "vineppo": [{"iteration": 0, "seconds": 0.0, "tokens": 0, "accuracy": 0.5},
                    {"iteration": 3, "seconds": 10.0, "tokens": 900, "accuracy": 0.8},
                    {"iteration": 6, "seconds": 20.0, "tokens": 1800, "accuracy": 0.7}],
        "ppo": [{"iteration": 0, "seconds": 0.0, "tokens": 0, "accuracy": 0.5},
                {"iteration": 9, "seconds": 20.0, "tokens": 500, "accuracy": 0.75}],
        "grpo": [{"iteration": 0, "seconds": 0.0, "tokens": 0, "accuracy": 0.5},
                 {"iteration": 9, "seconds": 20.0, "tokens": 500, "accuracy": 0.6}],
    }
    rows = table(results).splitlines()[2:]
    assert rows[0] == "| vineppo | 6 | 80.0% | 70.0% | 10 | 900 |"
    assert rows[1] == "| ppo | 9 | 75.0% | 75.0% | 20 | 500 |"
    assert rows[2] == "| grpo | 9 | 60.0% | 60.0% | — | — |"


def test_run_specs_add_the_k_ablation_and_reject_unknown_methods():
    specs = run_specs(["vineppo", "ppo"], [1, 3, 9], base_k=9)
    assert [s.label for s in specs] == ["vineppo", "ppo", "vineppo K=1", "vineppo K=3"]
    assert specs[2].overrides == ("algo.name=vineppo", "algo.vineppo.k=1")
    with pytest.raises(ValueError, match="reinforce"):
        run_specs(["reinforce"], [], base_k=9)


@pytest.mark.slow
def test_a_tiny_comparison_writes_results_plots_and_table(tmp_path, sft_cache, capsys):
    out = tmp_path / "compare"
    code = main(["bench", "compare", "--methods", "vineppo", "ppo", "--k", "1", "--budget", "1",
                 "--eval-seconds", "0.5", "--out", str(out), *TINY])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["results"]) == {"vineppo", "ppo", "vineppo K=1"}
    for points in results["results"].values():
        assert points[0]["iteration"] == 0 and points[-1]["seconds"] >= 1
        assert all("train_accuracy" in p for p in points[1:])
    for name in ("accuracy_vs_seconds", "accuracy_vs_tokens", "generalization", "k_ablation"):
        assert (out / f"{name}.png").stat().st_size > 1000
    assert "| vineppo K=1 |" in capsys.readouterr().out
    run = out / "run-ppo"  # a run directory that `vineppo report` and `vineppo analyze values` can read
    assert (run / "checkpoints" / "latest").is_file()
    assert [r["iteration"] for r in read_metrics(run)] == list(range(results["results"]["ppo"][-1]["iteration"] + 1))
