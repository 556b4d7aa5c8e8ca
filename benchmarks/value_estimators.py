"""What each VinePPO value estimator costs and how close it comes to the true values, on the same samples: MC
rollouts and tokens of one training iteration's batch, and mean absolute error against a many-rollout ground
truth (issue 17: K, `root_value`, `reuse_samples`, `k_allocation`).

The policy is the run's starting point (the cached SFT warm start of a built-in task, or model.path); one
iteration's batch (`train.prompts_per_iteration` training prompts x `samples_per_prompt` samples, the training
sampling settings) is drawn once. Every estimator (`--variants`, each a comma-separated list of algo.vineppo
keys) values the step boundaries of every sample as the trainer does (vineppo.credit.vine.vine_credit), each with
its own fresh rollouts; then `--states` of the batch's unique states are drawn at random and rolled out
`--truth-rollouts` times each for the ground truth; `--batches` such batches, independent. The error is taken
over every (sample, boundary) at a drawn state that the estimator values (`min_step_surprisal` values fewer,
`skip_agreeing_groups` none of the samples it skips; a paired difference takes the pairs both value): with
sibling reuse the same state has a different estimate for each sample (it leaves the sample out).

    python benchmarks/value_estimators.py --config configs/forks.yaml [--states 128] [--truth-rollouts 256]
        [--variants k=9 k=3 k=3,reuse_samples=true ...] [overrides...]

Prints one table row per estimator: MC states and MC tokens per batch, the share of K-per-state rollouts saved,
the MAE with its 95% t-interval over the (sample, boundary) pairs of all batches, and the paired difference of
the errors to the first variant's (same pairs); then one JSON line with all of it.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import time

import torch

from vineppo.bench.stats import mean_interval
from vineppo.config import load_config
from vineppo.context import Context
from vineppo.credit.vine import mc_values, vine_credit
from vineppo.models import resolve_device
from vineppo.progress import make_console
from vineppo.rollout import State, sample_episodes
from vineppo.setup import build_setup
from vineppo.steps import TokenTexts, estimated_boundaries, split_steps
from vineppo.trainer import initial_model_path

DEFAULT_VARIANTS = [
    "k=3", "k=9", "k=1", "k=3,root_value=group", "k=3,reuse_samples=true", "k=9,reuse_samples=true",
    "k=9,reuse_samples=true,root_value=group", "k=3,k_allocation=group_spread",
    "k=3,k_allocation=group_spread,reuse_samples=true",
]


def interval(values: list[float]) -> str:
    i = mean_interval(values)
    return f"{i.mean:.3f} [{i.low:.3f}, {i.high:.3f}]"


def measure_batch(setup, cfg, configs, args, seed: int, device) -> dict:
    """One iteration's batch, valued by every estimator, and the ground truth at `args.states` of its states:
    the costs per estimator and the absolute errors per (sample, boundary) at the drawn states."""
    generator = torch.Generator(device=device).manual_seed(seed)

    def context(config) -> Context:
        return Context(config, setup.engine, setup.task, setup.codec.decode, setup.rollouts, device, generator)

    problems = random.Random(seed).sample(setup.task.train_problems(), cfg.train.prompts_per_iteration)
    batch = sample_episodes(context(cfg), problems, cfg.train.samples_per_prompt, setup.codec.encode)
    token_texts = TokenTexts(setup.codec.decode)
    boundaries = []  # per episode, the token prefixes of its estimated boundaries
    for episode in batch:
        starts = split_steps(token_texts(episode.response_ids))
        estimated = starts[: estimated_boundaries(len(starts), cfg.algo.vineppo.max_value_steps)]
        boundaries.append([tuple(episode.prompt_ids + episode.response_ids[:s]) for s in estimated])

    estimates, costs = {}, {}
    for variant, config in configs.items():
        episodes = copy.deepcopy(batch)
        samples = list(episodes)  # vine_credit leaves out what `skip_agreeing_groups` skips, adds trained rollouts
        clock = time.perf_counter()
        metrics = vine_credit(episodes, context(config))
        costs[variant] = {"seconds": time.perf_counter() - clock, "states": metrics["value/states"],
                          "tokens": metrics["tokens/mc"], "saved": metrics["value/mc_saved"]}
        valued, cap = {id(e) for e in episodes}, config.algo.vineppo.max_value_steps
        estimates[variant] = [  # per sample, the values of the boundaries it estimated (by their token prefixes)
            {tuple(e.prompt_ids + e.response_ids[:s]): v
             for s, v in list(zip(e.step_starts, e.step_values))[: estimated_boundaries(len(e.step_starts), cap)]}
            if id(e) in valued else {}
            for e in samples
        ]

    unique = {}  # prefix -> its state
    for episode, keys in zip(batch, boundaries):
        for step, key in enumerate(keys):
            unique.setdefault(key, State(episode.problem, episode.prompt_ids, list(key[len(episode.prompt_ids):]), step))
    drawn = random.Random(seed + 1).sample(sorted(unique), min(args.states, len(unique)))
    truth = dict(zip(drawn, mc_values(setup.engine, setup.task, setup.codec.decode, [unique[k] for k in drawn],
                                      args.truth_rollouts, setup.rollouts, generator).values))
    pairs = [(e, key) for e, keys in enumerate(boundaries) for key in keys if key in truth]
    return {
        "costs": costs,
        "errors": {v: {(seed, e, key): abs(values[e][key] - truth[key]) for e, key in pairs if key in values[e]}
                   for v, values in estimates.items()},
        "counts": {"samples": len(batch), "unique_states": len(unique), "truth_states": len(drawn),
                   "pairs": len(pairs), "truth_sum": sum(truth.values())},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None)
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, metavar="KEY=VALUE,...")
    parser.add_argument("--batches", type=int, default=4, help="independent batches (seeds seed .. seed + N - 1)")
    parser.add_argument("--states", type=int, default=128, help="unique states of a batch given a ground truth")
    parser.add_argument("--truth-rollouts", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("overrides", nargs="*", help="dotted config overrides (before --variants)")
    args = parser.parse_args()
    started = time.perf_counter()
    configs = {v: load_config(args.config, [*args.overrides, *(f"algo.vineppo.{kv}" for kv in v.split(","))])
               for v in args.variants}
    cfg = load_config(args.config, args.overrides)
    device = resolve_device(cfg.model.device)
    setup = build_setup(cfg, initial_model_path(cfg, make_console()), device)
    batches = [measure_batch(setup, cfg, configs, args, args.seed + b, device) for b in range(args.batches)]

    counts = {key: sum(b["counts"][key] for b in batches) for key in batches[0]["counts"]}
    errors = {v: {pair: e for b in batches for pair, e in b["errors"][v].items()} for v in args.variants}
    costs = {v: {key: sum(b["costs"][v][key] for b in batches) / len(batches) for key in batches[0]["costs"][v]}
             for v in args.variants}
    first = args.variants[0]
    print(f"{args.batches} batches of {cfg.train.prompts_per_iteration} prompts x {cfg.train.samples_per_prompt} "
          f"samples: {counts['unique_states'] / args.batches:.0f} unique states per batch, {counts['truth_states']} "
          f"with a ground truth of {args.truth_rollouts} rollouts (mean {counts['truth_sum'] / counts['truth_states']:.3f}), "
          f"{counts['pairs']} (sample, boundary) pairs at them")
    print(f"| estimator | MC states per batch | MC tokens per batch | rollouts saved | seconds per batch | MAE "
          f"| MAE - {first} (paired) |")
    print("|---|---|---|---|---|---|---|")
    for variant in args.variants:
        cost = costs[variant]
        common = [pair for pair in errors[variant] if pair in errors[first]]
        paired = interval([errors[variant][p] - errors[first][p] for p in common]) if variant != first else "—"
        print(f"| {variant} | {cost['states']:.0f} | {cost['tokens']:,.0f} | {cost['saved']:.0%} | "
              f"{cost['seconds']:.1f} | {interval(list(errors[variant].values()))} | {paired} |")
    print(json.dumps({
        "batches": args.batches, **{k: v for k, v in counts.items() if k != "truth_sum"},
        "estimators": {
            v: {**costs[v], "pairs": len(errors[v]), "mae": mean_interval(list(errors[v].values())).as_dict()}
            for v in args.variants
        },
        "seconds": time.perf_counter() - started,
    }))


if __name__ == "__main__":
    main()
