"""The seeded comparison benchmark: its statistics and cost model by hand, resuming, and a tiny run writing every
output."""

import itertools
import json
import math

import pytest

from tiny import TINY

from vineppo.bench import compare as compare_module
from vineppo.bench import report as report_module
from vineppo.bench.compare import Budget, RunSpec, compare, finished_or_run, parse_variant, run_specs
from vineppo.bench.cost import CostModel, iteration_cost, measured_generation_cost, update_seconds_per_trained_token
from vineppo.bench.report import (ablation_k, coarse_iterations_note, cost_table, cut_to_figures, default_marks,
                                  paired_table, per_iteration, summarize, summary_table, training_accuracy_table)
from vineppo.bench.stats import (accuracy_at, area_under_curve, first_reaching, mean_interval, paired_differences,
                                 training_accuracy_mean, widest_step)
from vineppo.cli import USAGE_ERROR, main
from vineppo.config import ConfigError, load_config
from vineppo.runlog import read_metrics

POINTS = [{"iteration": 0, "seconds": 0.0, "tokens": 0, "accuracy": 0.5},
          {"iteration": 3, "seconds": 10.0, "tokens": 900, "accuracy": 0.8},
          {"iteration": 6, "seconds": 20.0, "tokens": 1800, "accuracy": 0.7}]


def test_the_interval_by_hand():
    # 1..5: mean 3, s = sqrt(2.5), t(0.975, 4) = 2.776445 (tables): half-width 2.776445 * sqrt(2.5) / sqrt(5)
    interval = mean_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    assert interval.mean == 3.0 and interval.n == 5
    assert interval.half_width == pytest.approx(2.776445 * math.sqrt(0.5), rel=1e-6)
    # two values 0 and 1: t(0.975, 1) = 12.706205, s = sqrt(0.5), half-width 12.706205 * 0.5
    assert mean_interval([0.0, 1.0]).half_width == pytest.approx(6.3531, rel=1e-4)
    one = mean_interval([0.7])
    assert one.mean == 0.7 and math.isnan(one.half_width) and math.isnan(mean_interval([]).mean)


def test_accuracy_at_area_and_first_reaching_by_hand():
    assert [accuracy_at(POINTS, t) for t in (0, 9.9, 10, 15, 30)] == [0.5, 0.5, 0.8, 0.8, 0.7]
    # 0.5 for 10 s, 0.8 for 10 s, 0.7 for the last 5 s of a 25 s budget
    assert area_under_curve(POINTS, 25) == pytest.approx((5 + 8 + 3.5) / 25)
    assert area_under_curve(POINTS, 15) == pytest.approx((5 + 4) / 15)  # points after the budget do not count
    assert first_reaching(POINTS, 0.75, "seconds") == 10.0 and first_reaching(POINTS, 0.75, "tokens") == 900
    assert first_reaching(POINTS, 0.9, "seconds") is None
    # the same step function on the iterations axis: 0.5 for 3 iterations, 0.8 for 3, 0.7 for the 7th
    assert [accuracy_at(POINTS, i, "iteration") for i in (2, 3, 7)] == [0.5, 0.8, 0.7]
    assert area_under_curve(POINTS, 7, "iteration") == pytest.approx((1.5 + 2.4 + 0.7) / 7)
    # the widest step: 10 s then 10 s, cut at 25 s to 5; over 15 s, 10 then 5; over iterations 0, 3, 6 to 7: 3
    assert widest_step(POINTS, 25) == 10 and widest_step(POINTS, 15) == 10 and widest_step(POINTS, 5) == 5
    assert widest_step(POINTS, 7, "iteration") == 3


def test_the_training_samples_accuracy_holds_over_the_stretch_before_each_point_by_hand():
    points = [{"seconds": 0.0, "accuracy": 0.5}, {"seconds": 10.0, "accuracy": 0.8, "train_accuracy": 0.4},
              {"seconds": 20.0, "accuracy": 0.7, "train_accuracy": 0.6}]
    assert training_accuracy_mean(points, 20) == pytest.approx((4 + 6) / 20)
    assert training_accuracy_mean(points, 15) == pytest.approx((4 + 3) / 15)  # 0.6 holds for 5 of the 15 s
    assert training_accuracy_mean(points, 15, start=5) == pytest.approx((2 + 3) / 10)
    assert training_accuracy_mean(points, 20, start=12) == pytest.approx(0.6)
    assert training_accuracy_mean(points, 4) == pytest.approx(0.4)  # inside the first stretch


def test_paired_differences_pair_by_seed():
    diff = paired_differences({0: 0.6, 1: 0.7, 2: 0.9}, {0: 0.5, 1: 0.5, 2: 0.6, 3: 0.1})  # seed 3 has no pair
    assert diff.n == 3 and diff.mean == pytest.approx(0.2)
    assert diff.half_width == pytest.approx(mean_interval([0.1, 0.2, 0.3]).half_width)


def run(seed, accuracies, seconds=(0.0, 10.0, 20.0), iterations=(0, 2, 4)):
    """A run's result; its training samples' accuracy since the previous evaluation is the test accuracy reached."""
    points = [{"iteration": iterations[i], "seconds": s, "tokens": 100 * i, "cost/gpu_1b": 10.0 * i, "cost/gpu_7b": 5.0 * i,
               "accuracy": a} for i, (s, a) in enumerate(zip(seconds, accuracies))]
    for point in points[1:]:
        point["train_accuracy"] = point["accuracy"]
    return {"seed": seed, "points": points, "iterations": []}


def test_the_summary_and_table_by_hand():
    results = {"a": {0: run(0, [0.5, 0.8, 0.9]), 1: run(1, [0.5, 0.6, 0.7])},
               "b": {0: run(0, [0.5, 0.5, 0.6]), 1: run(1, [0.5, 0.5, 0.5])}}
    summary = summarize(results, budget=20, marks=[10, 20], thresholds=[0.6], baseline="b")
    a, b = summary["runs"]["a"], summary["runs"]["b"]
    assert a["auc"]["mean"] == pytest.approx(((0.5 + 0.8) / 2 + (0.5 + 0.6) / 2) / 2)
    assert a["accuracy_at_10s"]["mean"] == pytest.approx(0.7) and a["accuracy_at_20s"]["mean"] == pytest.approx(0.8)
    assert a["seconds_to_0.6"] == {**mean_interval([10.0, 10.0]).as_dict(), "of": 2}
    assert b["seconds_to_0.6"]["n"] == 1 and b["seconds_to_0.6"]["mean"] == 20.0  # seed 1 never reaches 60%
    assert a["iterations_per_second"]["mean"] == pytest.approx(0.2)
    assert summary["cost_ends"] == {"gpu_1b": 20.0, "gpu_7b": 10.0}
    # AUC over 20 s: a 0.65 (seed 0: 0.5 then 0.8) and 0.55 (seed 1), b 0.5 and 0.5; paired by seed: 0.15, 0.05
    assert a["vs_baseline"]["auc"]["mean"] == pytest.approx(0.1) and "vs_baseline" not in b
    assert a["vs_baseline"]["auc"]["high"] == pytest.approx(0.1 + 12.706205 * 0.05, rel=1e-6)
    rows = summary_table(summary, "b").splitlines()
    assert rows[0].startswith("| run | seeds | iterations/s | accuracy at 10 s | accuracy at 20 s | AUC (seconds)")
    assert "| AUC (first 4 iterations) | seconds to 60% |" in rows[0]
    assert rows[0].endswith("| AUC (first 4 iterations) - b |")
    assert rows[3].startswith("| b | 2 | 0.2 [0.2, 0.2] | 50.0 [50.0, 50.0] | 55.0 [-8.5, 118.5] |")
    assert rows[3].endswith("| 50.0 [50.0, 50.0] | 20.0 (1/2) | — | — | — | — |")
    # training samples' accuracy, held over the stretch before each point: a 0.85 and 0.65 over 0-20 s, 0.9 and 0.7
    # over 15-20 s; b 0.55 and 0.5, 0.6 and 0.5; paired by seed 0.30 and 0.15, 0.3 and 0.2
    assert a["train_accuracy"]["mean"] == pytest.approx(0.75) and b["train_accuracy"]["mean"] == pytest.approx(0.525)
    assert a["vs_baseline"]["train_accuracy"]["mean"] == pytest.approx(0.225)
    assert a["vs_baseline"]["train_accuracy_last_quarter"]["mean"] == pytest.approx(0.25)
    rows = training_accuracy_table(summary, "b").splitlines()
    assert rows[0] == "| run | training samples' accuracy, 0-20 s | 15-20 s | 0-20 s - b | 15-20 s - b |"
    assert rows[2] == "| a | 75.0 [-52.1, 202.1] | 80.0 [-47.1, 207.1] | +22.5 [-72.8, +117.8] | +25.0 [-38.5, +88.5] |"
    assert rows[3] == "| b | 52.5 [20.7, 84.3] | 55.0 [-8.5, 118.5] | — | — |"


def test_default_marks_are_cut_to_three_figures_never_past_the_seconds_covered():
    assert default_marks(20.0) == [5.0, 10.0, 20.0]
    assert default_marks(11.35) == [2.83, 5.67, 11.3]  # 2.8375, 5.675, 11.35 cut, not rounded
    assert default_marks(1234.5) == [308.0, 617.0, 1230.0]
    assert cut_to_figures(0.29) == 0.29 and cut_to_figures(0.0123456) == 0.0123
    assert all(cut_to_figures(x) <= x for x in (0.1 * i + 0.07 for i in range(1, 500)))


@pytest.mark.parametrize("labels, drawn_with_methods, drawn_in_ablation", [
    # plain vineppo (base K = 9) stands for VinePPO in the method figures; the K runs go to the ablation only
    (["grpo", "vineppo", "vineppo K=3", "vineppo K=3 reuse"], ["grpo", "vineppo", "vineppo K=3 reuse"],
     ["vineppo K=3", "vineppo K=9"]),
    # without plain vineppo the K runs are drawn with the methods too, so that VinePPO is never missing there
    (["restem", "grpo", "vineppo K=3"], ["restem", "grpo", "vineppo K=3"], ["vineppo K=3"]),
])
def test_every_figure_draws_vineppo(tmp_path, monkeypatch, labels, drawn_with_methods, drawn_in_ablation):
    drawn = {}
    def record(runs, path):
        drawn[path.name] = list(runs)

    monkeypatch.setattr(report_module, "plot_bands", lambda runs, key, end, label, path, title="": record(runs, path))
    monkeypatch.setattr(report_module, "plot_generalization", record)
    report_module.write_plots({label: {0: run(0, [0.5, 0.6, 0.7])} for label in labels}, 20.0, tmp_path, base_k=9)
    ablation = drawn.pop("k_ablation.png")
    assert ablation == drawn_in_ablation
    assert set(drawn) >= {"accuracy_vs_seconds.png", "accuracy_vs_iterations.png", "generalization.png"}
    assert all(runs == drawn_with_methods for runs in drawn.values()), drawn


def test_the_iterations_axis_and_a_run_stopped_by_its_iteration_budget_by_hand():
    # a: 2 iterations a 10 s, stopped by an iteration budget of 4 at 20 s; b: 1 iteration a 10 s, 40 s for 4
    results = {"a": {0: run(0, [0.5, 0.7, 0.9]), 1: run(1, [0.5, 0.9, 0.9])},
               "b": {0: run(0, [0.5, 0.6, 0.8], (0.0, 20.0, 40.0)), 1: run(1, [0.5, 0.5, 0.7], (0.0, 20.0, 40.0))}}
    summary = summarize(results, budget=1000, thresholds=[0.6], baseline="a")
    # seconds: the stretch both cover, 20 s, and the default marks within it
    assert summary["seconds_end"] == 20 and summary["marks"] == [5, 10, 20]
    a, b = summary["runs"]["a"], summary["runs"]["b"]
    assert a["auc"]["mean"] == pytest.approx((0.6 + 0.7) / 2) and b["auc"]["mean"] == pytest.approx(0.5)
    # iterations: 4 for both; a seed 0: 0.5 for 2, 0.7 for 2; b seed 0: 0.5, 0.6; seed 1: a 0.7, b 0.5
    assert summary["iterations_end"] == 4
    assert a["auc_iterations"]["mean"] == pytest.approx((0.6 + 0.7) / 2)
    assert b["auc_iterations"]["mean"] == pytest.approx((0.55 + 0.5) / 2)
    assert b["vs_baseline"]["auc_iterations"]["mean"] == pytest.approx(-0.125)
    assert summary["paired_auc_iterations"]["a - b"]["mean"] == pytest.approx(0.125)
    # seconds: differences 0.1 and 0.2 (half-width 12.706205 * 0.05); iterations: 0.05 and 0.2 (12.706205 * 0.075);
    # training samples over 0-20 s: a 0.8 and 0.9, b 0.6 and 0.5 (its point at 20 s holds from 0 s), 0.2 and 0.4
    assert (paired_table(summary).splitlines()[2]
            == "| a - b | +15.0 [-48.5, +78.5] | +12.5 [-82.8, +107.8] | +30.0 [-97.1, +157.1] |")


def test_runs_evaluated_too_sparsely_in_iterations_are_named_under_the_tables():
    # over the 8 iterations both reach: "every" is evaluated every 2 (a quarter of the axis, fine), "sparse" at 0,
    # 5 and 10 (5 of the 8 under its first evaluation, the last 3 under its second)
    every = run(0, [0.5] * 5, seconds=(0.0, 5.0, 10.0, 15.0, 20.0), iterations=(0, 2, 4, 6, 8))
    sparse = run(0, [0.5, 0.7, 0.8], iterations=(0, 5, 10))
    summary = summarize({"every": {0: every}, "sparse": {0: sparse}}, budget=20)
    assert summary["iterations_end"] == 8 and summary["widest_iteration_step"] == {"every": 2, "sparse": 5}
    assert coarse_iterations_note(summary) == (
        "The AUC over iterations is coarse for sparse (up to 5): that many of the first 8 iterations lie under one "
        "evaluation's accuracy. `--eval-iterations` evaluates every run at the same iterations.")
    assert coarse_iterations_note(summarize({"every": {0: every}}, budget=20)) == ""


def iteration(seconds, policy, mc, trained, lr=1e-4):
    return {"time/sample": seconds / 2, "time/credit": 0.0, "time/update": seconds / 2, "tokens/policy": policy,
            "tokens/mc": mc, "tokens/update": trained, "tokens/value_update": 0, "train/lr": lr}


def test_every_pair_and_the_mean_iteration_by_hand():
    results = {"a": {0: run(0, [0.5, 0.8, 0.9]), 1: run(1, [0.5, 0.6, 0.7])},
               "b": {0: run(0, [0.5, 0.5, 0.6]), 1: run(1, [0.5, 0.5, 0.5])},
               "c": {0: run(0, [0.5, 0.9, 0.9]), 1: run(1, [0.5, 0.9, 0.9])}}
    results["a"][0]["iterations"] = [iteration(2.0, 100, 900, 400, lr=1e-5), iteration(4.0, 100, 300, 400)]
    results["a"][1]["iterations"] = [iteration(3.0, 100, 600, 400)]
    summary = summarize(results, budget=20, marks=[10, 20], thresholds=[0.6])
    # AUC over 20 s by seed: a 0.65, 0.55; b 0.5, 0.5; c 0.7, 0.7
    pairs = summary["paired_auc"]
    assert list(pairs) == ["a - b", "a - c", "b - c"]
    assert pairs["a - b"]["mean"] == pytest.approx(0.1) and pairs["b - c"]["mean"] == pytest.approx(-0.2)
    assert pairs["a - c"]["high"] == pytest.approx(-0.1 + 12.706205 * 0.05, rel=1e-6)
    assert (paired_table(summary).splitlines()[2]
            == "| a - b | +10.0 [-53.5, +73.5] | +10.0 [-53.5, +73.5] | +22.5 [-72.8, +117.8] |")
    # a's three iterations: 3 s, 100 policy and 600 MC tokens, 400 trained on average; b and c have none;
    # updates of 1 + 2 + 1.5 s for 1,200 trained tokens: 3,750 ms per 1,000; learning rates 1e-5, 1e-4, 1e-4
    assert summary["per_iteration"]["a"] == pytest.approx(
        {"seconds": 3.0, "time/sample": 1.5, "time/credit": 0.0, "time/update": 1.5, "tokens/policy": 100,
         "tokens/mc": 600, "tokens/trained": 400, "update_ms_per_1k_trained": 3750.0, "lr": 7e-5})
    assert summary["per_iteration"]["b"] == {}
    # generation 4.5 s for 2,100 tokens, update 4.5 s for 1,200 trained tokens
    assert summary["cpu_generation_cost"] == pytest.approx((4.5 / 2100) / (4.5 / 1200))
    rows = cost_table(summary).splitlines()
    assert rows[2] == "| a | 3.00 (1.50 + 0.00 + 1.50) | 100 + 600 | 400 | 3750.0 | 7.0e-05 |" and len(rows) == 5
    assert "0.57 trained tokens" in rows[4]


def test_the_cost_model_counts_generated_and_trained_tokens():
    record = {"tokens/policy": 100, "tokens/mc": 900, "tokens/update": 400, "tokens/value_update": 400,
              "time/sample": 1.0, "time/credit": 9.0, "time/update": 4.0}
    assert iteration_cost(record, CostModel("x", 0.1)) == pytest.approx(0.1 * 1000 + 800)
    # 10 s for 1000 generated tokens, 4 s for 800 trained tokens: a generated token costs 2 trained tokens
    assert measured_generation_cost([record, record]) == pytest.approx((10 / 1000) / (4 / 800))
    assert measured_generation_cost([]) is None
    untrained = {**record, "tokens/update": 0, "tokens/value_update": 0}
    assert measured_generation_cost([untrained]) is None
    assert update_seconds_per_trained_token([record, untrained]) == pytest.approx(8 / 800)
    assert update_seconds_per_trained_token([untrained]) is None
    # a run that trained nothing has no update cost: a dash in the table, not a made-up 0 ms
    summary = {"per_iteration": {"u": per_iteration({0: {"iterations": [untrained]}})}, "cpu_generation_cost": None}
    assert summary["per_iteration"]["u"]["update_ms_per_1k_trained"] is None
    # nor a rate recorded; the seconds split in the order sampling + credit + update
    assert cost_table(summary).splitlines()[2] == "| u | 14.00 (1.00 + 9.00 + 4.00) | 100 + 900 | 0 | — | — |"


def test_a_finished_run_is_not_run_again_and_a_cut_short_one_starts_over(tmp_path):
    calls = []

    def fake_run(run_dir):
        calls.append(run_dir)
        run_dir.mkdir(parents=True)
        (run_dir / "checkpoints").mkdir()
        return {"points": [{"accuracy": 0.5}], "seed": 0}

    spec = RunSpec("vineppo K=3", ("algo.vineppo.k=3",))
    cut_short = tmp_path / "runs" / "vineppoK3" / "seed0"
    (cut_short / "stale").mkdir(parents=True)
    result, ran = finished_or_run(spec, 0, tmp_path, fake_run)
    assert ran and calls == [cut_short] and not (cut_short / "stale").exists()
    again, ran = finished_or_run(spec, 0, tmp_path, fake_run)
    assert not ran and again == result and len(calls) == 1


def test_run_specs_add_the_k_ablation_and_reject_unknown_methods():
    specs = run_specs(["vineppo", "ppo"], [1, 3, 9], base_k=9)
    assert [s.label for s in specs] == ["vineppo", "ppo", "vineppo K=1", "vineppo K=3"]
    assert specs[2].overrides == ("algo.name=vineppo", "algo.vineppo.k=1")
    # Without "vineppo" among the methods, the base config's K is run as a K of the ablation, not dropped.
    specs = run_specs(["ppo"], [3, 9], base_k=9)
    assert [s.label for s in specs] == ["ppo", "vineppo K=3", "vineppo K=9"]
    assert specs[2].overrides == ("algo.name=vineppo", "algo.vineppo.k=9")
    with pytest.raises(ValueError, match="reinforce"):
        run_specs(["reinforce"], [], base_k=9)


@pytest.mark.slow
def test_a_variant_is_a_label_with_overrides_and_bad_ones_are_refused(tmp_path):
    spec = parse_variant("vineppo K=3 reuse: algo.vineppo.k=3, algo.vineppo.reuse_samples=true")
    assert spec == RunSpec("vineppo K=3 reuse", ("algo.vineppo.k=3", "algo.vineppo.reuse_samples=true"))
    assert spec.slug == "vineppoK3reuse"
    for bad in ("no colon", ":algo.vineppo.k=3", "label:", "label:algo.vineppo.k", "label:=3"):
        with pytest.raises(ConfigError, match="LABEL:KEY=VALUE"):
            parse_variant(bad)
    specs = run_specs(["grpo"], [3], base_k=9, variants=[spec])
    assert [s.label for s in specs] == ["grpo", "vineppo K=3", "vineppo K=3 reuse"]
    with pytest.raises(ConfigError, match="vineppo K=3"):  # its run directory would be the K ablation's
        run_specs(["grpo"], [3], base_k=9, variants=[parse_variant("vineppoK=3:algo.vineppo.k=3")])
    with pytest.raises(ConfigError, match="kk"):  # checked before the first run starts
        compare(["grpo"], [], Budget(1.0, 1.0), tmp_path, variants=[parse_variant("typo:algo.vineppo.kk=3")])
    assert not (tmp_path / "runs").exists()
    # the K ablation's plot takes its own runs only, not a variant whose label starts alike
    assert [ablation_k(label) for label in ("vineppo K=3", "vineppo K=3 reuse", "vineppo", "grpo")] == [3, None, None, None]


def test_a_tiny_seeded_comparison_writes_results_plots_and_table_and_resumes(
    tmp_path, sft_cache, capsys, monkeypatch
):
    out = tmp_path / "compare"
    args = ["bench", "compare", "--methods", "vineppo", "ppo", "--k", "1", "--budget", "1", "--eval-seconds", "0.5",
            "--seeds", "2", "--baseline", "ppo", "--eval-samples", "2", "--out", str(out), *TINY,
            "train.iterations=50"]  # the schedule's horizon: the overrides' value, not the comparison's default
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["results"]) == {"vineppo", "ppo", "vineppo K=1"}
    for runs in results["results"].values():
        assert set(runs) == {"0", "1"}
        for run in runs.values():
            points = run["points"]
            assert points[0]["iteration"] == 0 and points[-1]["seconds"] >= 1
            assert all("train_accuracy" in p and p["cost/gpu_7b"] > 0 for p in points[1:])
            assert len(run["iterations"]) == points[-1]["iteration"]
            assert all(0 < record["train/lr"] <= 1e-4 for record in run["iterations"])  # the rate steps took
    assert results["summary"]["runs"]["vineppo"]["vs_baseline"]["auc"]["n"] == 2
    assert results["evaluation"] == {"samples": 2, "temperature": 0.35}
    for name in ("accuracy_vs_seconds", "accuracy_vs_iterations", "accuracy_vs_tokens", "accuracy_vs_gpu_7b_cost",
                 "generalization", "k_ablation"):
        assert (out / f"{name}.png").stat().st_size > 1000
    first = capsys.readouterr().out
    assert "| vineppo K=1 | 2 |" in first
    run = out / "runs" / "ppo" / "seed1"  # a run directory that `vineppo report` and `vineppo analyze values` read
    assert (run / "checkpoints" / "latest").is_file()
    assert load_config(run / "config.yaml").train.iterations == 50
    last = results["results"]["ppo"]["1"]["points"][-1]["iteration"]
    assert [r["iteration"] for r in read_metrics(run)] == list(range(last + 1))

    # Run again: every run is finished, nothing is trained, the same table comes out.
    assert main(args) == 0
    captured = capsys.readouterr()
    assert captured.out == first and captured.err.count("(done before)") == 6

    # One run lost: only it is run; the time left counts the runs still to run, not those read back.
    (out / "runs" / "vineppo" / "seed0" / "result.json").unlink()
    clock = itertools.count(0, 600)  # every reading of the clock 10 minutes later
    monkeypatch.setattr(compare_module.time, "perf_counter", lambda: next(clock))
    assert main(args) == 0
    err = capsys.readouterr().err
    assert err.count("(done before)") == 5 and "min left" in err
    assert all(line.endswith("about 0 min left") for line in err.splitlines() if "min left" in line)


def test_an_iteration_budget_stops_every_run_and_evaluates_at_its_marks(tmp_path, sft_cache, capsys):
    out = tmp_path / "compare"
    args = ["bench", "compare", "--methods", "grpo", "restem", "--budget", "600", "--eval-seconds", "600",
            "--iterations", "3", "--eval-iterations", "2", "--out", str(out), *TINY]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert (results["budget_iterations"], results["eval_iterations"]) == (3, 2)
    for runs in results["results"].values():
        run = runs["0"]
        assert [p["iteration"] for p in run["points"]] == [0, 2, 3] and len(run["iterations"]) == 3
    assert results["summary"]["iterations_end"] == 3
    assert results["summary"]["seconds_end"] < 600  # the seconds both runs covered, not the unspent budget
    assert "AUC (first 3 iterations)" in capsys.readouterr().out
    for bad in (["--iterations", "0"], ["--eval-iterations", "-1"], ["--budget", "0"]):
        assert main([*args[:2], *bad, "--out", str(tmp_path / "bad"), *TINY]) == USAGE_ERROR
        assert f"error: {bad[0]} " in capsys.readouterr().err and not (tmp_path / "bad").exists()
