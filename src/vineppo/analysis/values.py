"""`vineppo analyze values`: how well VinePPO's MC estimate and PPO's value network predict values (the paper's
value-prediction and step-ranking analyses).

From the latest checkpoint of a run:
  1. held-out states: one response per test problem sampled by the checkpoint's policy with the run's sampling
     settings, cut into steps; `states` of their step boundaries drawn at random;
  2. ground truth: the mean reward of `ground_truth_rollouts` continuations from each state (the paper: 256);
  3. VinePPO's estimate: the mean reward of `k` fresh continuations (default the run's algo.vineppo.k), drawn after
     and independently of the ground-truth ones;
  4. the value network's prediction at the same boundary (the run's own if it is a PPO run, or `value_run`'s);
  5. mean absolute error of each against the ground truth, and step-ranking accuracy: from each state, the first
     two ground-truth rollouts whose first steps differ (and do not finish the response) give two next states,
     valued like the others; over the pairs whose ground-truth values differ, how often each estimator ranks the
     better one higher (ties half).
Departure from the paper: it ranks 5 alternative next steps per state (PAPER-NOTES 1.4); here 2, so chance is 50%.
The ground truth is itself an MC mean: with 256 rollouts its own standard error is at most 0.031, part of every
estimator's measured error.

Every random draw comes from one generator seeded by `seed`, used in a fixed order, so a run is reproducible
(for the same engine batch size and device).
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from rich.console import Console

from vineppo.analysis.plots import plot_error_histogram, plot_scatter
from vineppo.analysis.states import alternative_next_states, held_out_states, value_network_values
from vineppo.analysis.stats import (
    Estimate,
    absolute_errors,
    mc_sampling_error,
    mean_with_stderr,
    ranking_accuracy,
)
from vineppo.checkpoint import Resumed, load_latest
from vineppo.config import load_config
from vineppo.credit.vine import mc_values
from vineppo.models import load_value_model, resolve_device
from vineppo.progress import Bars, make_console
from vineppo.rollout import State
from vineppo.runlog import CONFIG_FILE
from vineppo.steps import TokenTexts
from vineppo.setup import build_setup

MC, VALUE_NETWORK = "mc", "value_network"


class AnalysisError(ValueError):
    """A run directory that cannot be analysed; the message says why."""


@dataclass(frozen=True)
class ValueAnalysisSettings:
    states: int = 256  # the paper's analyses use at most 256 states (PAPER-NOTES 1.4)
    ground_truth_rollouts: int = 256
    k: int | None = None  # None: the run's algo.vineppo.k
    seed: int = 0

    def __post_init__(self):
        for name in ("states", "ground_truth_rollouts", "k"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise AnalysisError(f"{name} must be >= 1, got {value}")


def latest_checkpoint(run_dir: Path) -> Resumed:
    if not (run_dir / CONFIG_FILE).is_file():
        raise AnalysisError(f"{run_dir}: no {CONFIG_FILE} there (is it a vineppo run directory?)")
    resumed = load_latest(run_dir)
    if resumed is None:
        raise AnalysisError(f"{run_dir} has no checkpoint yet")
    return resumed


def analyze_values(
    run_dir: Path,
    settings: ValueAnalysisSettings = ValueAnalysisSettings(),
    value_run: Path | None = None,
    output: Path | None = None,
    console: Console | None = None,
    progress: bool | None = None,
) -> dict:
    """Run the analysis, write `output` (default RUN_DIR/analysis/values.json) and its PNGs beside it, print the
    figures; returns what the JSON holds. Progress bars follow the run's logging.progress unless `progress` says."""
    started = time.perf_counter()
    run_dir = Path(run_dir)
    console = console or make_console()
    checkpoint = latest_checkpoint(run_dir)
    value_source = Path(value_run) if value_run is not None else run_dir
    value_dir = latest_checkpoint(value_source).value_dir
    if value_run is not None and value_dir is None:
        raise AnalysisError(f"--value-run {value_run}: its latest checkpoint has no value network (not a PPO run)")

    cfg = load_config(run_dir / CONFIG_FILE)
    k = settings.k or cfg.algo.vineppo.k
    device = resolve_device(cfg.model.device)
    model_cfg = cfg.model
    # what the run sampled with: the task with its prompt format and stop strings, the run's engine
    setup = build_setup(cfg, str(checkpoint.policy_dir), device)
    engine, task, params = setup.engine, setup.task, setup.rollouts
    encode, decode = setup.codec.encode, setup.codec.decode
    token_texts = TokenTexts(decode)
    generator = torch.Generator(device=device).manual_seed(settings.seed)
    problems = task.test_problems()

    with Bars(console, cfg.logging.progress if progress is None else progress) as bars:
        with bars.phase("test responses", len(problems)) as bar:
            held_out = held_out_states(
                engine, encode, token_texts, problems, settings.states, params, cfg.algo.vineppo.max_value_steps,
                generator, random.Random(settings.seed), bar.advance,
            )
        states = held_out.states
        with bars.phase("ground truth", len(states)) as bar:
            truth = mc_values(
                engine, task, decode, states, settings.ground_truth_rollouts, params, generator, bar.advance
            )
        pairs = [alternative_next_states(s, r, token_texts) for s, r in zip(states, truth.rollouts)]
        pairs = [p for p in pairs if p]
        next_states = [s for pair in pairs for s in pair]
        with bars.phase("ground truth, next states", len(next_states)) as bar:
            next_truth = mc_values(
                engine, task, decode, next_states, settings.ground_truth_rollouts, params, generator, bar.advance
            )
        every_state = states + next_states
        with bars.phase(f"MC estimate (K={k})", len(every_state)) as bar:
            estimates = {MC: mc_values(engine, task, decode, every_state, k, params, generator, bar.advance).values}
        if value_dir is not None:
            value_model = load_value_model(value_dir, model_cfg.dtype, device, model_cfg.trust_remote_code)
            estimates[VALUE_NETWORK] = value_network_values(
                value_model, every_state, engine.pad_token_id, device, cfg.train.micro_batch_size
            )

    figures = summarize(states, truth.values, next_truth.values, estimates, k)
    result = {
        "run": str(run_dir),
        "checkpoint_iteration": checkpoint.iteration,
        "value_network_from": str(value_dir) if value_dir is not None else None,
        "settings": {
            **asdict(settings), "k": k, "temperature": params.temperature, "top_p": params.top_p,
            "max_new_tokens": params.max_new_tokens, "max_value_steps": cfg.algo.vineppo.max_value_steps,
        },
        "counts": {
            "test_responses": held_out.responses, "candidate_states": held_out.candidates, "states": len(states),
            "states_with_two_next_steps": len(pairs), **figures.pop("counts"),
        },
        **figures,
        "seconds": time.perf_counter() - started,
    }
    output = Path(output) if output is not None else run_dir / "analysis" / "values.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2))
    write_plots(result, output)
    print_figures(result, console, output)
    return result


def summarize(
    states: list[State], truth: list[float], next_truth: list[float], estimates: dict[str, list[float]], k: int
) -> dict:
    """The figures: MAE over the held-out states, step-ranking accuracy over the pairs of next states.

    `estimates[name]` holds a value for every state, then for every next state (pairs in order)."""
    n = len(states)
    pair_truth = list(zip(next_truth[0::2], next_truth[1::2]))
    mae, ranking, by_step = {}, {}, {}
    for name, values in estimates.items():
        errors = absolute_errors(values[:n], truth)
        mae[name] = mean_with_stderr(errors).as_dict()
        ranking[name] = ranking_accuracy(pair_truth, list(zip(values[n::2], values[n + 1 :: 2]))).as_dict()
        by_step[name] = {
            step: mean_with_stderr([e for e, s in zip(errors, states) if s.step == step]).as_dict()
            for step in sorted({s.step for s in states})
        }
    if VALUE_NETWORK in estimates:
        mc_errors = absolute_errors(estimates[MC][:n], truth)
        value_errors = absolute_errors(estimates[VALUE_NETWORK][:n], truth)
        mae["value_network_minus_mc"] = mean_with_stderr([v - m for v, m in zip(value_errors, mc_errors)]).as_dict()
    return {
        "value_network": "present" if VALUE_NETWORK in estimates else "absent",
        "mean_absolute_error": mae,
        "mc_expected_error_from_sampling": mean_with_stderr([mc_sampling_error(t, k) for t in truth]).as_dict(),
        "step_ranking_accuracy": ranking,
        "mean_absolute_error_by_step": by_step,
        "ground_truth_mean": mean_with_stderr(truth).as_dict(),
        "counts": {"ranked_pairs": sum(a != b for a, b in pair_truth),
                   "pairs_with_equal_ground_truth": sum(a == b for a, b in pair_truth)},
        "states": [
            {"problem": s.problem.id, "step": s.step, "response_tokens": len(s.response_ids), "ground_truth": t,
             **{name: values[i] for name, values in estimates.items()}}
            for i, (s, t) in enumerate(zip(states, truth))
        ],
        "pairs": [
            {"ground_truth": list(t), **{name: [values[n + 2 * i], values[n + 2 * i + 1]]
                                         for name, values in estimates.items()}}
            for i, t in enumerate(pair_truth)
        ],
    }


LABELS = {MC: "VinePPO MC estimate", VALUE_NETWORK: "PPO value network"}


def write_plots(result: dict, output: Path) -> list[Path]:
    truth = [s["ground_truth"] for s in result["states"]]
    names = [MC, VALUE_NETWORK] if result["value_network"] == "present" else [MC]
    k = result["settings"]["k"]
    labels = {MC: f"{LABELS[MC]} (K={k})", VALUE_NETWORK: LABELS[VALUE_NETWORK]}
    predictions = {labels[name]: [s[name] for s in result["states"]] for name in names}
    errors = {label: [abs(p - t) for p, t in zip(values, truth)] for label, values in predictions.items()}
    return [
        plot_scatter(truth, predictions, output.with_name(f"{output.stem}_scatter.png")),
        plot_error_histogram(errors, output.with_name(f"{output.stem}_errors.png")),
    ]


def print_figures(result: dict, console: Console, output: Path) -> None:
    counts, settings = result["counts"], result["settings"]
    mae, ranking = result["mean_absolute_error"], result["step_ranking_accuracy"]
    lines = [
        (
            f"value analysis of {result['run']} (iteration {result['checkpoint_iteration']}): {counts['states']} "
            f"held-out states, ground truth from {settings['ground_truth_rollouts']} rollouts each (mean "
            f"{Estimate(**result['ground_truth_mean'])})"
        ),
        (
            f"mean absolute error: VinePPO MC (K={settings['k']}) {Estimate(**mae[MC])}"
            f" (sampling noise alone: {Estimate(**result['mc_expected_error_from_sampling'])})"
        ),
    ]
    if result["value_network"] == "present":
        lines.append(f"mean absolute error: PPO value network {Estimate(**mae[VALUE_NETWORK])} "
                     f"(minus MC's, paired: {Estimate(**mae['value_network_minus_mc'])})")
    else:
        lines.append("value network: absent (not a PPO run; --value-run PPO_RUN_DIR compares one)")
    lines.append(
        f"step ranking accuracy over {counts['ranked_pairs']} pairs of next states "
        f"({counts['pairs_with_equal_ground_truth']} with equal ground truth dropped): "
        + ", ".join(f"{LABELS[name]} {Estimate(**ranking[name])}" for name in ranking)
    )
    lines.append(f"wrote {output} and its plots ({result['seconds']:.0f} s)")
    for line in lines:
        console.print(line, markup=False, highlight=False, soft_wrap=True)
