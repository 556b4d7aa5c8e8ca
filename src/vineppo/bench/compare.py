"""The paper's comparison at equal wall-clock, over several seeds: every method from one shared SFT model
(`vineppo bench compare`).

Every run uses the same config (by default the quickstart's task, SFT model, engine, prompts and samples per
iteration and update settings; `config_paths` and `overrides` change it for all runs alike) except `algo.name`,
for the K ablation `algo.vineppo.k`, a variant's own overrides (`--variant`), and `train.seed`: seed s changes the
RL sampling and the order of the training prompts, while the SFT model (its own `model.tiny.sft.seed`, or
`model.path`) stays the one shared starting point. Each run gets the same budget of training seconds (sampling +
credit + update; evaluation is not counted), and test accuracy is measured every `eval_seconds` of training time:
greedy, or the mean accuracy of several samples per problem at a temperature (the paper: 16 at T = 0.35). A budget
of iterations (`Budget.iterations`, with evaluations every `eval_iterations`) compares the methods at equal policy
samples instead: whether a method learns more per iteration, whatever its iterations cost.

Resumable: each finished run leaves `runs/<label>/seed<s>/result.json` (written atomically) and is not run again;
a run cut short is started over. Writes to `out`: results.json (settings, every run's points and per-iteration
costs, the summary), table.md (also printed), and plots with 95% intervals over the seeds (vineppo.bench.report).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from rich.console import Console

from vineppo.algorithms import METHODS
from vineppo.bench.cost import GPU_COSTS, generated_tokens, iteration_cost
from vineppo.bench.report import (coarse_iterations_note, cost_table, paired_table, summarize, summary_table,
                                  training_accuracy_table, write_plots)
from vineppo.config import ConfigError, ConfigPaths, load_config
from vineppo.engine.base import SamplingParams
from vineppo.evaluate import evaluate_sampled
from vineppo.progress import Bars, make_console
from vineppo.trainer import Trainer

RESULT_FILE = "result.json"
SCHEDULE_ITERATIONS = 1000
"""`train.iterations` of every run unless the overrides set it: the horizon of the linear learning-rate decay, far
beyond what most runs reach in a 120 s budget (a nearly constant rate). A run that passes it trains on at rate 0,
so long budgets and fast methods (DPO+, skipped groups: 5-6 iterations a second on the quickstart task) set it
higher, and `train.warmup_ratio` lower with it: the warmup is that share of the horizon (0.03 x 1000 = 30
iterations; 0.003 keeps 30 at 10,000)."""
PER_ITERATION = ("time/sample", "time/credit", "time/update", "tokens/policy", "tokens/mc", "tokens/update",
                 "tokens/value_update", "train/accuracy", "train/lr")


@dataclass(frozen=True)
class RunSpec:
    label: str
    overrides: tuple[str, ...]

    @property
    def slug(self) -> str:
        return self.label.replace(" ", "").replace("=", "")


@dataclass(frozen=True)
class Budget:
    """A run stops after `seconds` of training or `iterations` iterations, whichever comes first, and is evaluated
    every `eval_seconds` of training and, if set, every `eval_iterations` iterations (and when it stops)."""

    seconds: float = 120.0
    eval_seconds: float = 10.0
    iterations: int | None = None
    eval_iterations: int | None = None

    def __post_init__(self) -> None:
        for flag, value in (("--budget", self.seconds), ("--eval-seconds", self.eval_seconds),
                            ("--iterations", self.iterations), ("--eval-iterations", self.eval_iterations)):
            if value is not None and value <= 0:
                raise ConfigError(f"{flag} {value:g}: expected a positive number")

    def spent(self, seconds: float, iteration: int) -> bool:
        return seconds >= self.seconds or (self.iterations is not None and iteration >= self.iterations)


@dataclass(frozen=True)
class Evaluation:
    samples: int = 0  # 0: greedy accuracy; n: the mean accuracy of n samples per problem at `temperature`
    temperature: float = 0.35


def parse_variant(text: str) -> RunSpec:
    """`LABEL:KEY=VALUE,KEY=VALUE...` (`--variant`): a run labelled LABEL with those overrides of the shared config,
    e.g. "vineppo K=3 reuse:algo.vineppo.k=3,algo.vineppo.reuse_samples=true"."""
    label, colon, overrides = text.partition(":")
    pairs = tuple(o.strip() for o in overrides.split(",")) if overrides.strip() else ()
    if not colon or not label.strip() or not pairs or any("=" not in o or o.startswith("=") for o in pairs):
        raise ConfigError(f"--variant {text!r}: expected LABEL:KEY=VALUE[,KEY=VALUE...], "
                          "e.g. 'vineppo K=3 reuse:algo.vineppo.k=3,algo.vineppo.reuse_samples=true'")
    return RunSpec(label.strip(), pairs)


def run_specs(
    methods: list[str], k_values: list[int], base_k: int, variants: list[RunSpec] = ()
) -> list[RunSpec]:
    """One run per method, then VinePPO once per K of the ablation (the base config's K only when "vineppo" is not
    among the methods, which already runs it), then the variants."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(METHODS)}")
    specs = [RunSpec(m, (f"algo.name={m}",)) for m in methods]
    specs += [RunSpec(f"vineppo K={k}", ("algo.name=vineppo", f"algo.vineppo.k={k}")) for k in k_values
              if k != base_k or "vineppo" not in methods]
    specs += variants
    slugs = [s.slug for s in specs]
    repeated = sorted({s.label for s in specs if slugs.count(s.slug) > 1})
    if repeated:
        raise ConfigError(f"--variant: label(s) {', '.join(repeated)} name another run (labels must differ in more "
                          "than spaces and '=')")
    return specs


def measure_accuracy(trainer: Trainer, evaluation: Evaluation, seed: int) -> float:
    """The policy's test accuracy: greedy, or the mean over `evaluation.samples` samples per problem."""
    if evaluation.samples == 0:
        return trainer.evaluate()["eval/accuracy"]
    cfg = trainer.cfg.engine
    params = SamplingParams(evaluation.temperature, cfg.top_p, cfg.max_new_tokens, trainer.task.stop_sequences)
    results = evaluate_sampled(
        trainer.engine, trainer.encode, trainer.decode, trainer.task, trainer.test_set, evaluation.samples, params,
        torch.Generator(device=trainer.device).manual_seed(seed),
    )
    return statistics.fmean(r.pass_at_1 for r in results)


def run_one(
    spec: RunSpec, seed: int, base: tuple[ConfigPaths, list[str]], budget: Budget, evaluation: Evaluation,
    run_dir: Path, console: Console,
) -> dict:
    """Train until the budget is spent, with an evaluation point at each of its marks; the points, and every
    iteration's timings and token counts (for the cost model)."""
    config_paths, overrides = base
    cfg = load_config(config_paths, [f"train.iterations={SCHEDULE_ITERATIONS}", *overrides, *spec.overrides,
                                     f"train.seed={seed}", "logging.progress=false"])
    trainer = Trainer(cfg, run_dir, console)
    points, iterations, seconds, tokens, costs, iteration, train_accuracies = [], [], 0.0, 0, {}, 0, []
    with Bars(console, enabled=False) as trainer.bars:
        accuracy = measure_accuracy(trainer, evaluation, seed)
        trainer.log.log(0, {"eval/accuracy": accuracy})
        points.append({"iteration": 0, "seconds": 0.0, "tokens": 0, **{f"cost/{m.name}": 0.0 for m in GPU_COSTS},
                       "accuracy": accuracy})
        next_eval = budget.eval_seconds
        while not budget.spent(seconds, iteration):
            started = time.perf_counter()
            metrics = trainer.iteration(iteration)
            seconds += time.perf_counter() - started
            iterations.append({key: metrics.get(key, 0) for key in PER_ITERATION})
            tokens += int(generated_tokens(metrics))
            for model in GPU_COSTS:
                costs[model.name] = costs.get(model.name, 0.0) + iteration_cost(metrics, model)
            train_accuracies.append(metrics["train/accuracy"])
            iteration += 1
            iteration_mark = budget.eval_iterations is not None and iteration % budget.eval_iterations == 0
            if seconds >= next_eval or iteration_mark or budget.spent(seconds, iteration):
                metrics["eval/accuracy"] = measure_accuracy(trainer, evaluation, seed)
                points.append({
                    "iteration": iteration, "seconds": round(seconds, 2), "tokens": tokens,
                    **{f"cost/{name}": round(cost) for name, cost in costs.items()},
                    "accuracy": metrics["eval/accuracy"], "train_accuracy": statistics.fmean(train_accuracies),
                })
                train_accuracies = []
                next_eval = (seconds // budget.eval_seconds + 1) * budget.eval_seconds
            trainer.log.log(iteration, metrics)
    trainer.save(iteration)  # so that `vineppo report` and `vineppo analyze values` can read the run
    trainer.log.close()
    return {"label": spec.label, "seed": seed, "points": points, "iterations": iterations}


def result_path(spec: RunSpec, seed: int, out: Path) -> Path:
    return out / "runs" / spec.slug / f"seed{seed}" / RESULT_FILE


def finished_or_run(spec: RunSpec, seed: int, out: Path, run) -> tuple[dict, bool]:
    """The run's result: read back if a previous call finished it, else run (from scratch) and written
    atomically. The flag says whether it ran now."""
    result_file = result_path(spec, seed, out)
    run_dir = result_file.parent
    if result_file.is_file():
        return json.loads(result_file.read_text()), False
    if run_dir.exists():  # cut short: its checkpoints are of a run whose points were lost
        shutil.rmtree(run_dir)
    result = run(run_dir)
    partial = result_file.with_suffix(".tmp")
    partial.write_text(json.dumps(result))
    os.replace(partial, result_file)
    return result, True


def compare(
    methods: list[str], k_values: list[int], budget: Budget, out: Path,
    config_paths: ConfigPaths = None, overrides: list[str] = (), console: Console | None = None,
    seeds: list[int] = (0,), baseline: str | None = None, marks: list[float] | None = None,
    thresholds: list[float] | None = None, evaluation: Evaluation = Evaluation(), variants: list[RunSpec] = (),
) -> str:
    """Run every spec with every seed, one after the other, write results and plots to `out`, return the
    markdown tables (the summary, every pair's AUC difference, the mean iteration's costs)."""
    console = console or make_console()
    base_k = load_config(config_paths, list(overrides)).algo.vineppo.k
    specs = run_specs(methods, k_values, base_k, list(variants))
    if baseline is not None and baseline not in [s.label for s in specs]:
        raise ConfigError(f"--baseline {baseline}: not one of the runs ({', '.join(s.label for s in specs)})")
    for spec in specs:  # a bad override fails now, not after the runs before it
        load_config(config_paths, [*overrides, *spec.overrides])
    out.mkdir(parents=True, exist_ok=True)
    base = (config_paths, list(overrides))
    results: dict[str, dict[int, dict]] = {spec.label: {} for spec in specs}
    total, done, ran, started = len(specs) * len(seeds), 0, 0, time.perf_counter()
    pending = sum(not result_path(spec, seed, out).is_file() for spec in specs for seed in seeds)  # to run now
    for seed in seeds:  # seed by seed, so that a cut-short comparison has every method on its first seeds
        for spec in specs:
            result, now = finished_or_run(
                spec, seed, out, lambda d: run_one(spec, seed, base, budget, evaluation, d, console)
            )
            results[spec.label][seed] = result
            done, ran = done + 1, ran + now
            elapsed = time.perf_counter() - started
            eta = f", about {elapsed / ran * (pending - ran) / 60:.0f} min left" if ran else ""
            final = result["points"][-1]
            console.print(f"[{done}/{total}] {spec.label}, seed {seed}: {final['iteration']} iterations, test "
                          f"accuracy {final['accuracy']:.1%}{' (done before)' if not now else ''}{eta}",
                          highlight=False)
    summary = summarize(results, budget.seconds, marks, thresholds, baseline)
    settings = {
        "budget_seconds": budget.seconds, "eval_seconds": budget.eval_seconds, "budget_iterations": budget.iterations,
        "eval_iterations": budget.eval_iterations, "seeds": list(seeds), "baseline": baseline,
        "evaluation": asdict(evaluation), "config": config_paths if config_paths is None else str(config_paths),
        "overrides": list(overrides), "runs": {s.label: s.overrides for s in specs},
    }
    (out / "results.json").write_text(json.dumps({**settings, "summary": summary, "results": results}, indent=1))
    write_plots(results, summary["seconds_end"], out, base_k)
    sections = [summary_table(summary, baseline), paired_table(summary), coarse_iterations_note(summary),
                training_accuracy_table(summary, baseline), cost_table(summary)]
    markdown = "\n\n".join(section for section in sections if section)
    (out / "table.md").write_text(markdown + "\n")
    return markdown
