"""The summary of a seeded comparison: per run label, means and 95% intervals over the seeds (vineppo.bench.stats)
of the figures the issue asks for, paired differences against a baseline and between every pair of runs, the mean
iteration's costs, the markdown tables and the plots.

Figures of one run: test accuracy at fixed training-second marks; the area under its accuracy-vs-seconds curve
over the budget (AUC, an accuracy; over the seconds every run covered, if a run stopped earlier at its iteration
budget); the seconds and generated tokens to reach accuracy thresholds (over the seeds that reach them; how many
did is given); iterations per second; on the GPU cost axes (vineppo.bench.cost), the area under the
accuracy-vs-cost curve up to the smallest cost every run of the comparison reached; and on the iterations axis
(equal policy samples: every method samples the same prompts x samples an iteration), the area under
accuracy-vs-iterations up to the fewest iterations every run made, which says whether a method learns more per
sample apart from what its iterations cost.
"""

from __future__ import annotations

import math
import re
import statistics
from contextlib import contextmanager
from functools import partial
from itertools import combinations
from pathlib import Path
from typing import Iterator

from vineppo.analysis.plots import pyplot

from vineppo.bench.cost import (GENERATED, GPU_COSTS, measured_generation_cost, trained_tokens,
                                update_seconds_per_trained_token)
from vineppo.bench.stats import (Interval, accuracy_at, area_under_curve, first_reaching, mean_interval,
                                 paired_differences, training_accuracy_mean, widest_step)

Runs = dict[str, dict[int, dict]]  # label -> seed -> a run's result (vineppo.bench.compare.run_one)
PHASES = ("time/sample", "time/credit", "time/update")  # an iteration's seconds: sampling, credit (MC), update


def default_thresholds(results: Runs) -> list[float]:
    """The starting model's accuracy (the mean over every run's first evaluation) plus 10 and 20 points."""
    start = mean_interval([r["points"][0]["accuracy"] for runs in results.values() for r in runs.values()]).mean
    return [round(start + 0.1, 2), round(start + 0.2, 2)]


def default_marks(seconds_end: float) -> list[float]:
    """A quarter, half and all of the seconds every run covered, cut (never rounded up) to 3 significant figures,
    so that a mark is printable and never lies past the seconds it stands for."""
    return [cut_to_figures(seconds_end * share) for share in (0.25, 0.5, 1.0)]


def cut_to_figures(value: float, figures: int = 3) -> float:
    """`value` (> 0) cut down to `figures` significant figures (the 1e-9 absorbs binary fractions such as 0.29)."""
    scale = 10.0 ** (figures - 1 - math.floor(math.log10(value)))
    return math.floor(value * scale + 1e-9) / scale


def summarize(
    results: Runs, budget: float, marks: list[float] | None = None, thresholds: list[float] | None = None,
    baseline: str | None = None,
) -> dict:
    seconds_end = min(budget, reached_by_all(results, "seconds"))
    marks = marks or default_marks(seconds_end)
    thresholds = thresholds or default_thresholds(results)
    cost_end = {m.name: reached_by_all(results, f"cost/{m.name}") for m in GPU_COSTS}
    iterations_end = reached_by_all(results, "iteration")

    def per_seed(runs: dict[int, dict]) -> dict[str, dict[int, float]]:
        figures: dict[str, dict[int, float]] = {"auc": {}, "auc_iterations": {}, "iterations_per_second": {},
                                                "train_accuracy": {}, "train_accuracy_last_quarter": {}}
        for seed, run in runs.items():
            points = run["points"]
            figures["auc"][seed] = area_under_curve(points, seconds_end)
            figures["auc_iterations"][seed] = area_under_curve(points, iterations_end, "iteration")
            figures["iterations_per_second"][seed] = points[-1]["iteration"] / points[-1]["seconds"]
            figures["train_accuracy"][seed] = training_accuracy_mean(points, seconds_end)
            figures["train_accuracy_last_quarter"][seed] = training_accuracy_mean(points, seconds_end,
                                                                                  0.75 * seconds_end)
            for mark in marks:
                figures.setdefault(f"accuracy_at_{mark:g}s", {})[seed] = accuracy_at(points, mark)
            for name, end in cost_end.items():
                figures.setdefault(f"auc_{name}", {})[seed] = area_under_curve(points, end, f"cost/{name}")
        return figures

    def pairs(figure: str) -> dict[str, dict]:
        return {f"{a} - {b}": paired_differences(figures[a][figure], figures[b][figure]).as_dict()
                for a, b in combinations(results, 2)}

    figures = {label: per_seed(runs) for label, runs in results.items()}
    summary: dict[str, dict] = {
        "marks": marks, "thresholds": thresholds, "seconds_end": seconds_end, "cost_ends": cost_end,
        "iterations_end": iterations_end, "runs": {},
        "paired_auc": pairs("auc"), "paired_auc_iterations": pairs("auc_iterations"),
        "paired_train_accuracy": pairs("train_accuracy"),
        "per_iteration": {label: per_iteration(runs) for label, runs in results.items()},
        "widest_iteration_step": {
            label: max(widest_step(r["points"], iterations_end, "iteration") for r in runs.values())
            for label, runs in results.items()},
    }
    records = [record for runs in results.values() for run in runs.values() for record in run["iterations"]]
    summary["cpu_generation_cost"] = measured_generation_cost(records)
    for label, runs in results.items():
        entry = {name: mean_interval(list(values.values())).as_dict() for name, values in figures[label].items()}
        for threshold in thresholds:
            for key in ("seconds", "tokens"):
                reached = [first_reaching(r["points"], threshold, key) for r in runs.values()]
                reached = [v for v in reached if v is not None]
                entry[f"{key}_to_{threshold:g}"] = {**mean_interval(reached).as_dict(), "of": len(runs)}
        if baseline is not None and label != baseline:
            entry["vs_baseline"] = {
                name: paired_differences(values, figures[baseline][name]).as_dict()
                for name, values in figures[label].items() if name != "iterations_per_second"
            }
        summary["runs"][label] = entry
    return summary


def per_iteration(runs: dict[int, dict]) -> dict[str, float | None]:
    """Means over every iteration of every seed: seconds (and their sampling, credit and update parts), policy and
    MC tokens generated, tokens trained; and the update's milliseconds per 1,000 trained tokens over all of them
    (None where nothing was trained), which compares the machine's speed between runs of one method (or of methods
    that update alike) made at different times; and the mean learning rate (None for runs recorded before it was)."""
    records = [record for run in runs.values() for record in run["iterations"]]
    if not records:
        return {}
    update_cost = update_seconds_per_trained_token(records)
    rates = [r["train/lr"] for r in records if "train/lr" in r]
    phases = {key: statistics.fmean(r[key] for r in records) for key in PHASES}
    return {
        "seconds": sum(phases.values()),
        **phases,
        **{key: statistics.fmean(r[key] for r in records) for key in GENERATED},
        "tokens/trained": statistics.fmean(trained_tokens(r) for r in records),
        "update_ms_per_1k_trained": None if update_cost is None else 1e6 * update_cost,
        "lr": statistics.fmean(rates) if rates else None,
    }


def _interval(figure: dict, percent: bool = True, signed: bool = False) -> str:
    """`mean [low, high]` (accuracies in points), the mean alone for one seed, a dash for none."""
    if figure["n"] == 0:
        return "—"
    scale, sign = (100 if percent else 1), ("+" if signed else "")
    mean = f"{figure['mean'] * scale:{sign}.1f}"
    if figure["n"] < 2:
        return mean
    return f"{mean} [{figure['low'] * scale:{sign}.1f}, {figure['high'] * scale:{sign}.1f}]"


def _baseline_cells(entry: dict, names: list[str]) -> list[str]:
    """A run's paired differences against the baseline for `names`; dashes for the baseline's own row."""
    paired = entry.get("vs_baseline")
    return ["—" if paired is None else _interval(paired[name], signed=True) for name in names]


def summary_table(summary: dict, baseline: str | None = None) -> str:
    """The markdown table: per run label, mean [95% interval] over the seeds (accuracies in points)."""
    marks, thresholds = summary["marks"], summary["thresholds"]
    by_iterations = f"AUC (first {summary['iterations_end']:g} iterations)"
    headers = ["run", "seeds", "iterations/s", *(f"accuracy at {m:g} s" for m in marks), "AUC (seconds)",
               *(f"AUC ({m.name} cost)" for m in GPU_COSTS), by_iterations,
               *(f"seconds to {t:.0%}" for t in thresholds)]
    if baseline is not None:
        headers += [f"AUC - {baseline}", *(f"AUC ({m.name}) - {baseline}" for m in GPU_COSTS),
                    f"{by_iterations} - {baseline}"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for label, entry in summary["runs"].items():
        reach = [entry[f"seconds_to_{t:g}"] for t in thresholds]
        cells = [
            label, str(entry["auc"]["n"]), _interval(entry["iterations_per_second"], percent=False),
            *(_interval(entry[f"accuracy_at_{m:g}s"]) for m in marks), _interval(entry["auc"]),
            *(_interval(entry[f"auc_{m.name}"]) for m in GPU_COSTS), _interval(entry["auc_iterations"]),
            *(f"{_interval(r, percent=False)} ({r['n']}/{r['of']})" for r in reach),
        ]
        if baseline is not None:
            cells += _baseline_cells(entry, ["auc", *(f"auc_{m.name}" for m in GPU_COSTS), "auc_iterations"])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_table(summary: dict) -> str:
    """Every pair of runs: the mean over seeds of (first's AUC - second's AUC, same seed), with its interval, on the
    seconds and on the iterations axis; and the same difference of the training samples' accuracy over the seconds."""
    lines = ["| pair (same seeds) | AUC difference (seconds) | AUC difference (iterations) "
             "| training samples' accuracy difference (seconds) |", "|---|---|---|---|"]
    lines += [f"| {pair} | {_interval(diff, signed=True)} | "
              f"{_interval(summary['paired_auc_iterations'][pair], signed=True)} | "
              f"{_interval(summary['paired_train_accuracy'][pair], signed=True)} |"
              for pair, diff in summary["paired_auc"].items()]
    return "\n".join(lines)


def training_accuracy_table(summary: dict, baseline: str | None = None) -> str:
    """Per run label, the accuracy of the samples it trained on (vineppo.bench.stats.training_accuracy_mean) over
    the seconds every run covered and over their last quarter: the policy's sampled accuracy on fresh training
    prompts, which greedy test accuracy can misstate where one token flips many greedy answers."""
    end = summary["seconds_end"]
    whole, last_quarter = f"0-{end:.0f} s", f"{0.75 * end:.0f}-{end:.0f} s"
    headers = ["run", f"training samples' accuracy, {whole}", last_quarter]
    if baseline is not None:
        headers += [f"{whole} - {baseline}", f"{last_quarter} - {baseline}"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    names = ["train_accuracy", "train_accuracy_last_quarter"]
    for label, entry in summary["runs"].items():
        cells = [label, *(_interval(entry[name]) for name in names)]
        if baseline is not None:
            cells += _baseline_cells(entry, names)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def coarse_iterations_note(summary: dict) -> str:
    """A warning (or "") naming the runs whose evaluations lie too far apart in iterations for the AUC over
    iterations to compare them: more than a quarter of the axis under one evaluation's accuracy, as in a seconds
    budget where a fast method is evaluated every dozen iterations and a slow one every two."""
    end = summary["iterations_end"]
    steps = {label: step for label, step in summary["widest_iteration_step"].items() if step > end / 4}
    if not steps:
        return ""
    named = ", ".join(f"{label} (up to {step:g})" for label, step in steps.items())
    return (f"The AUC over iterations is coarse for {named}: that many of the first {end:g} iterations lie under "
            "one evaluation's accuracy. `--eval-iterations` evaluates every run at the same iterations.")


def cost_table(summary: dict) -> str:
    """Per run label, its mean iteration: seconds (sampling + credit + update: where a method's time goes),
    generated tokens (policy + MC), trained tokens, the update's milliseconds per 1,000 trained tokens, the learning
    rate its steps took (a warmup counted in iterations holds a method with few iterations in the budget below the
    others' rate); then this machine's generation cost measured from every iteration (vineppo.bench.cost)."""
    header = ("| run | seconds per iteration (sampling + credit + update) "
              "| generated tokens per iteration (policy + MC) | trained tokens per iteration "
              "| update ms per 1,000 trained tokens | mean learning rate |")
    lines = [header, "|---|---|---|---|---|---|"]
    for label, mean in summary["per_iteration"].items():
        if mean:
            update_ms, lr = mean["update_ms_per_1k_trained"], mean["lr"]
            phases = " + ".join(f"{mean[key]:.2f}" for key in PHASES)
            lines.append(f"| {label} | {mean['seconds']:.2f} ({phases}) | {mean['tokens/policy']:,.0f} + "
                         f"{mean['tokens/mc']:,.0f} | {mean['tokens/trained']:,.0f} | "
                         f"{'—' if update_ms is None else f'{update_ms:.1f}'} | {'—' if lr is None else f'{lr:.1e}'} |")
    if summary["cpu_generation_cost"] is not None:
        lines.append(f"\nOn this machine a generated token cost {summary['cpu_generation_cost']:.2f} trained tokens "
                     "(sampling + credit seconds per generated token / update seconds per trained token).")
    return "\n".join(lines)


def _band(runs: dict[int, dict], key: str, grid: list[float]) -> tuple[list[float], list[float], list[float]]:
    """The mean and 95% interval over the seeds of accuracy (a step function of `key`) on `grid`."""
    columns = [[accuracy_at(r["points"], x, key) for r in runs.values()] for x in grid]
    intervals: list[Interval] = [mean_interval(c) for c in columns]
    mean = [i.mean for i in intervals]
    low = [i.low if i.n > 1 else i.mean for i in intervals]
    high = [i.high if i.n > 1 else i.mean for i in intervals]
    return mean, low, high


@contextmanager
def accuracy_axes(path: Path, x_label: str, title: str = "") -> Iterator:
    """Axes of test accuracy against `x_label`, saved to `path` with a legend when the block ends."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    yield ax
    ax.set_xlabel(x_label)
    ax.set_ylabel("test accuracy")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_bands(results: Runs, key: str, end: float, label: str, path: Path, title: str = "") -> None:
    """Test accuracy against `key` up to `end`: per run label the mean over its seeds, shaded 95% interval."""
    grid = [end * i / 200 for i in range(201)]
    with accuracy_axes(path, label, title) as ax:
        for name, runs in results.items():
            mean, low, high = _band(runs, key, grid)
            line = ax.step(grid, mean, where="post", label=f"{name} ({len(runs)} seeds)")[0]
            ax.fill_between(grid, low, high, step="post", alpha=0.2, color=line.get_color())


def plot_generalization(results: Runs, path: Path) -> None:
    """Test accuracy against the training accuracy of the samples since the previous evaluation, every point of
    every seed (the paper: VinePPO reaches a higher test accuracy for a given training accuracy)."""
    with accuracy_axes(path, "training accuracy (samples since the previous evaluation)") as ax:
        for name, runs in results.items():
            shown = [p for r in runs.values() for p in r["points"] if "train_accuracy" in p]
            ax.scatter([p["train_accuracy"] for p in shown], [p["accuracy"] for p in shown], s=10, alpha=0.5,
                       label=name)


def reached_by_all(results: Runs, key: str) -> float:
    """The smallest final value of `key` (seconds, iterations, tokens, a cost) over all runs: the stretch every run
    covers."""
    return min(r["points"][-1][key] for runs in results.values() for r in runs.values())


def ablation_k(label: str) -> int | None:
    """K of a run of the K ablation ("vineppo K=3"), None for any other run (a method, or a variant such as
    "vineppo K=3 reuse")."""
    found = re.fullmatch(r"vineppo K=(\d+)", label)
    return int(found[1]) if found else None


def write_plots(results: Runs, seconds_end: float, out: Path, base_k: int) -> None:
    """The method figures (every axis) and the K ablation's. The ablation's runs join the method figures only when
    plain `vineppo` is not among the runs to stand for VinePPO there (e.g. `--methods restem grpo --k 3`)."""
    plain = "vineppo" in results
    methods = {label: runs for label, runs in results.items() if not plain or ablation_k(label) is None}
    plot_bands(methods, "seconds", seconds_end, "training seconds (sampling + credit + update)",
               out / "accuracy_vs_seconds.png")
    last = partial(reached_by_all, results)
    plot_bands(methods, "iteration", last("iteration"), "iterations (equal policy samples)",
               out / "accuracy_vs_iterations.png")
    plot_bands(methods, "tokens", last("tokens"), "generated tokens (policy + MC rollouts)",
               out / "accuracy_vs_tokens.png")
    for model in GPU_COSTS:
        plot_bands(methods, f"cost/{model.name}", last(f"cost/{model.name}"),
                   f"GPU cost ({model.name}: a generated token = {model.generation} trained tokens)",
                   out / f"accuracy_vs_{model.name}_cost.png")
    plot_generalization(methods, out / "generalization.png")
    ablation = {label: runs for label, runs in results.items() if ablation_k(label) is not None}
    if ablation:
        if plain:
            ablation[f"vineppo K={base_k}"] = results["vineppo"]
        ablation = dict(sorted(ablation.items(), key=lambda item: ablation_k(item[0])))
        plot_bands(ablation, "seconds", seconds_end, "training seconds (sampling + credit + update)",
                   out / "k_ablation.png", "VinePPO: MC rollouts per step boundary")
