"""The update's seconds and padding under micro-batch settings, side by side on the same training run.

Each setting (`--settings`, each MICRO:GROUPED, e.g. 16:true for `train.micro_batch_size=16
train.group_by_length=true`) trains `--iterations` iterations from the same seed and starting model, in `--rounds`
interleaved rounds (A B C, A B C, ...), so every setting sees the same episodes up to float rounding (the settings
give the same optimizer step; tests/test_update.py). No evaluation is run.

    python benchmarks/update_micro_batches.py [overrides...] [--config configs/forks.yaml] [--iterations 8]
        [--rounds 2] [--settings 64:false 16:false 16:true 8:true]

(overrides before --settings, which takes every word after it).

The default workload is the forks task's in-band SFT model (model.tiny.sft.steps=6000, cached after its first
training) under VinePPO K = 1 with `skip_agreeing_groups`, `reuse_samples` and `drop_zero_advantage`: the setting
whose update the drop cut only at the tails (docs/algorithms.md). Prints per setting the update's seconds per
iteration (the mean over iterations 2..N, the median over rounds), tokens through the update's passes and their
padded positions per iteration, and the update seconds' ratio to the first setting; then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import tempfile

from vineppo.config import load_config
from vineppo.progress import Bars, make_console
from vineppo.trainer import Trainer

WORKLOAD = [
    "model.tiny.sft.steps=6000", "algo.name=vineppo", "algo.vineppo.k=1", "algo.vineppo.skip_agreeing_groups=true",
    "algo.vineppo.reuse_samples=true", "algo.drop_zero_advantage=true",
]


def one_run(config: str, overrides: list[str], iterations: int, console) -> list[dict]:
    cfg = load_config(config, [*WORKLOAD, f"train.iterations={iterations}", *overrides, "logging.progress=false",
                               "logging.tensorboard=false"])
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(cfg, run_dir, console)
        with Bars(console, enabled=False) as trainer.bars:
            records = [trainer.iteration(i) for i in range(iterations)]
        trainer.log.close()
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/forks.yaml")
    parser.add_argument("--iterations", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--settings", nargs="+", default=["64:false", "16:false", "16:true", "8:true"])
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_args()
    for text in args.settings:
        if not re.fullmatch(r"\d+:(true|false)", text):
            parser.error(f"--settings: '{text}' is not MICRO:GROUPED, e.g. 16:true")
    console = make_console()
    runs: dict[str, list[list[dict]]] = {text: [] for text in args.settings}
    for round_ in range(args.rounds):
        for text in args.settings:
            micro, grouped = text.split(":")
            overrides = [f"train.micro_batch_size={micro}", f"train.group_by_length={grouped}", *args.overrides]
            runs[text].append(one_run(args.config, overrides, args.iterations, console))
            console.print(f"round {round_ + 1}/{args.rounds}: {text} done")

    def per_iteration(text: str, key: str) -> float:
        """Mean over iterations 2..N (the first pays for warm-up), median over rounds."""
        return statistics.median(statistics.fmean(r[key] for r in records[1:]) for records in runs[text])

    rows = []
    for text in args.settings:
        rows.append({
            "setting": text, "update_seconds": per_iteration(text, "time/update"),
            "tokens": per_iteration(text, "tokens/update"), "padded": per_iteration(text, "tokens/update_padded"),
            "reward": per_iteration(text, "train/reward"),
        })
    first = rows[0]["update_seconds"]
    console.print("| micro-batch:grouped | update s/iteration | tokens/iteration | padded positions/iteration "
                  "| padding share | update s / first | mean reward |")
    console.print("|---|---|---|---|---|---|---|")
    for row in rows:
        console.print(
            f"| {row['setting']} | {row['update_seconds']:.2f} | {row['tokens']:,.0f} | {row['padded']:,.0f} | "
            f"{1 - row['tokens'] / row['padded']:.0%} | {row['update_seconds'] / first:.2f} | {row['reward']:.3f} |"
        )
    print(json.dumps({"iterations": args.iterations, "rounds": args.rounds, "rows": rows}))


if __name__ == "__main__":
    main()
