"""VinePPO against its baselines at equal wall-clock, from one shared SFT model.

Every method runs the quickstart's task, SFT model, engine, prompts per iteration, samples per prompt, seed and
PPO update; only `algo.name` differs. Each gets the same budget of training seconds (sampling + credit + update;
evaluation time is not counted), and greedy test accuracy is measured every `--eval-every` iterations.
`train.iterations` is set far beyond what the budget reaches, so the learning-rate schedule is the same, nearly
constant one for every method.

Writes to --out: results.json, accuracy_vs_seconds.png, accuracy_vs_tokens.png and table.md (peak and final
accuracy, seconds and generated tokens to reach PPO's peak), and prints the table.

    python benchmarks/compare_algorithms.py [--methods vineppo ppo grpo rloo] [--budget 120] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rich.console import Console

from vineppo.config import load_config
from vineppo.progress import Bars
from vineppo.trainer import Trainer


def run_method(name: str, budget: float, eval_every: int, out: Path, console: Console) -> list[dict]:
    cfg = load_config(None, [f"algo.name={name}", "train.iterations=1000", "logging.progress=false"])
    trainer = Trainer(cfg, out / f"run-{name}", console)
    points, seconds, tokens, iteration = [], 0.0, 0, 0
    with Bars(console, enabled=False) as trainer.bars:
        points.append({"iteration": 0, "seconds": 0.0, "tokens": 0, "accuracy": trainer.evaluate()["eval/accuracy"]})
        while seconds < budget:
            started = time.perf_counter()
            metrics = trainer.iteration(iteration)
            seconds += time.perf_counter() - started
            tokens += int(metrics["tokens/policy"] + metrics["tokens/mc"])
            iteration += 1
            if iteration % eval_every == 0 or seconds >= budget:
                accuracy = trainer.evaluate()["eval/accuracy"]
                points.append({"iteration": iteration, "seconds": round(seconds, 1), "tokens": tokens,
                               "accuracy": accuracy, "train_accuracy": metrics["train/accuracy"]})
                console.print(f"{name}: iteration {iteration}, {seconds:.0f} s, test accuracy {accuracy:.1%}")
    return points


def first_reaching(points: list[dict], target: float, key: str) -> float | None:
    return next((p[key] for p in points if p["accuracy"] >= target), None)


def table(results: dict[str, list[dict]]) -> str:
    reference = max(p["accuracy"] for p in results["ppo"]) if "ppo" in results else None
    lines = [
        "| method | peak accuracy | final accuracy | seconds to PPO's peak | tokens to PPO's peak |",
        "|---|---|---|---|---|",
    ]
    for name, points in results.items():
        to_s = first_reaching(points, reference, "seconds") if reference is not None else None
        to_t = first_reaching(points, reference, "tokens") if reference is not None else None
        lines.append(
            f"| {name} | {max(p['accuracy'] for p in points):.1%} | {points[-1]['accuracy']:.1%} | "
            f"{'—' if to_s is None else f'{to_s:.0f}'} | {'—' if to_t is None else f'{to_t:,}'} |"
        )
    return "\n".join(lines)


def plot(results: dict[str, list[dict]], key: str, label: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, points in results.items():
        ax.plot([p[key] for p in points], [p["accuracy"] for p in points], "o-", label=name)
    ax.set_xlabel(label)
    ax.set_ylabel("greedy test accuracy")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["vineppo", "ppo", "grpo", "rloo"])
    parser.add_argument("--budget", type=float, default=120.0, help="training seconds per method")
    parser.add_argument("--eval-every", type=int, default=3, help="iterations between evaluations")
    parser.add_argument("--out", default="runs/compare")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    console = Console(stderr=True)
    results = {name: run_method(name, args.budget, args.eval_every, out, console) for name in args.methods}
    (out / "results.json").write_text(json.dumps({"budget_seconds": args.budget, "results": results}, indent=1))
    plot(results, "seconds", "training seconds (sampling + credit + update)", out / "accuracy_vs_seconds.png")
    plot(results, "tokens", "generated tokens (policy + MC rollouts)", out / "accuracy_vs_tokens.png")
    markdown = table(results)
    (out / "table.md").write_text(markdown + "\n")
    print(markdown)


if __name__ == "__main__":
    main()
