"""The paper's comparison at equal wall-clock: every method from one shared SFT model (`vineppo bench compare`).

Every run uses the same config (by default the quickstart's task, SFT model, engine, prompts and samples per
iteration, seed and update settings; `config_paths` and `overrides` change it for all runs alike) except
`algo.name` and, for the K ablation, `algo.vineppo.k`. Each run gets the same budget of
training seconds (sampling + credit + update; evaluation is not counted), and greedy test accuracy is measured
every `eval_seconds` of training time, so every method is evaluated at the same points of its budget.
`train.iterations` is set far beyond what the budget reaches (1000), so the learning-rate schedule is the same,
nearly constant one for every run.

Writes to `out`: results.json; PNGs of test accuracy against training seconds and against generated tokens
(policy samples + MC rollouts); generalization.png (test accuracy against the training accuracy of the samples
since the previous evaluation); k_ablation.png when K values are given; table.md (peak and final accuracy,
seconds and tokens to reach PPO's peak), which is also printed.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from vineppo.algorithms import METHODS
from vineppo.config import ConfigPaths, load_config
from vineppo.progress import Bars, make_console
from vineppo.trainer import Trainer


@dataclass(frozen=True)
class RunSpec:
    label: str
    overrides: tuple[str, ...]


def run_specs(methods: list[str], k_values: list[int], base_k: int) -> list[RunSpec]:
    """One run per method, then VinePPO once per K of the ablation (the base config's K is not rerun)."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(METHODS)}")
    specs = [RunSpec(m, (f"algo.name={m}",)) for m in methods]
    specs += [RunSpec(f"vineppo K={k}", ("algo.name=vineppo", f"algo.vineppo.k={k}")) for k in k_values if k != base_k]
    return specs


def run_one(
    spec: RunSpec, base: tuple[ConfigPaths, list[str]], budget: float, eval_seconds: float, out: Path,
    console: Console,
) -> list[dict]:
    """Train until `budget` training seconds have passed; an evaluation point each `eval_seconds` of them."""
    config_paths, overrides = base
    cfg = load_config(config_paths, [*overrides, *spec.overrides, "train.iterations=1000", "logging.progress=false"])
    trainer = Trainer(cfg, out / ("run-" + spec.label.replace(" ", "").replace("=", "")), console)
    points, seconds, tokens, iteration, train_accuracies = [], 0.0, 0, 0, []
    with Bars(console, enabled=False) as trainer.bars:
        initial = trainer.evaluate()
        trainer.log.log(0, initial)
        points.append({"iteration": 0, "seconds": 0.0, "tokens": 0, "accuracy": initial["eval/accuracy"]})
        next_eval = eval_seconds
        while seconds < budget:
            started = time.perf_counter()
            metrics = trainer.iteration(iteration)
            seconds += time.perf_counter() - started
            tokens += int(metrics["tokens/policy"] + metrics["tokens/mc"])
            train_accuracies.append(metrics["train/accuracy"])
            iteration += 1
            if seconds >= next_eval or seconds >= budget:
                metrics.update(trainer.evaluate())
                points.append({
                    "iteration": iteration, "seconds": round(seconds, 1), "tokens": tokens,
                    "accuracy": metrics["eval/accuracy"], "train_accuracy": statistics.fmean(train_accuracies),
                })
                train_accuracies = []
                next_eval = (seconds // eval_seconds + 1) * eval_seconds
                console.print(f"{spec.label}: iteration {iteration}, {seconds:.0f} s, test accuracy "
                              f"{metrics['eval/accuracy']:.1%}")
            trainer.log.log(iteration, metrics)
    trainer.save(iteration)  # so that `vineppo report` and `vineppo analyze values` can read the run
    trainer.log.close()
    return points


def first_reaching(points: list[dict], target: float, key: str) -> float | None:
    return next((p[key] for p in points if p["accuracy"] >= target), None)


def table(results: dict[str, list[dict]]) -> str:
    reference = max(p["accuracy"] for p in results["ppo"]) if "ppo" in results else None
    lines = [
        "| method | iterations | peak accuracy | final accuracy | seconds to PPO's peak | tokens to PPO's peak |",
        "|---|---|---|---|---|---|",
    ]
    for name, points in results.items():
        to_s = first_reaching(points, reference, "seconds") if reference is not None else None
        to_t = first_reaching(points, reference, "tokens") if reference is not None else None
        lines.append(
            f"| {name} | {points[-1]['iteration']} | {max(p['accuracy'] for p in points):.1%} | "
            f"{points[-1]['accuracy']:.1%} | {'—' if to_s is None else f'{to_s:.0f}'} | "
            f"{'—' if to_t is None else f'{to_t:,}'} |"
        )
    return "\n".join(lines)


def plot(
    results: dict[str, list[dict]], x_key: str, x_label: str, path: Path, title: str = "", joined: bool = True
) -> None:
    """Test accuracy against `x_key`, one line per run (`joined=False`: points, with a faint line in time order)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, points in results.items():
        shown = [p for p in points if x_key in p]
        line = ax.plot([p[x_key] for p in shown], [p["accuracy"] for p in shown], "o-", markersize=3, label=name)[0]
        if not joined:
            line.set_alpha(0.35)
            ax.scatter([p[x_key] for p in shown], [p["accuracy"] for p in shown], s=14, color=line.get_color())
    ax.set_xlabel(x_label)
    ax.set_ylabel("greedy test accuracy")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def compare(
    methods: list[str], k_values: list[int], budget: float, eval_seconds: float, out: Path,
    config_paths: ConfigPaths = None, overrides: list[str] = (), console: Console | None = None,
) -> str:
    """Run every spec one after the other, write results and plots to `out`, return the markdown table."""
    console = console or make_console()
    base_k = load_config(config_paths, list(overrides)).algo.vineppo.k
    specs = run_specs(methods, k_values, base_k)
    out.mkdir(parents=True, exist_ok=True)
    base = (config_paths, list(overrides))
    results = {spec.label: run_one(spec, base, budget, eval_seconds, out, console) for spec in specs}
    settings = {
        "budget_seconds": budget, "eval_seconds": eval_seconds, "config": config_paths, "overrides": list(overrides),
        "runs": {s.label: s.overrides for s in specs},
    }
    (out / "results.json").write_text(json.dumps({**settings, "results": results}, indent=1))
    methods_only = {m: results[m] for m in methods}
    plot(methods_only, "seconds", "training seconds (sampling + credit + update)", out / "accuracy_vs_seconds.png")
    plot(methods_only, "tokens", "generated tokens (policy + MC rollouts)", out / "accuracy_vs_tokens.png")
    plot(methods_only, "train_accuracy", "training accuracy (samples at T = 0.6 since the last evaluation)",
         out / "generalization.png", "test accuracy for a given training accuracy", joined=False)
    ablation = {label: points for label, points in results.items() if label.startswith("vineppo K=")}
    if ablation:
        if "vineppo" in results:
            ablation[f"vineppo K={base_k}"] = results["vineppo"]
        ablation = dict(sorted(ablation.items(), key=lambda item: int(item[0].split("=")[1])))
        plot(ablation, "seconds", "training seconds (sampling + credit + update)", out / "k_ablation.png",
             "VinePPO: MC rollouts per step boundary")
    markdown = table(results)
    (out / "table.md").write_text(markdown + "\n")
    return markdown
