"""The issue-3 benchmark: `vineppo train` with no arguments, from a cold SFT cache, timed end to end.

Prints the SFT model's greedy test accuracy, the final accuracy, the gain in points and the minutes taken
(SFT included). Targets on a 2-core CPU: <= 10 minutes, >= +10 points.

    python benchmarks/quickstart.py [--seed N] [extra overrides...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

from vineppo.cli import main
from vineppo.runlog import read_metrics


def run(seed: int, overrides: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["VINEPPO_CACHE"] = os.path.join(tmp, "cache")  # cold cache: SFT is part of the time
        run_dir = os.path.join(tmp, "run")
        started = time.perf_counter()
        code = main(["train", "--run-dir", run_dir, f"train.seed={seed}", f"model.tiny.sft.seed={seed}", *overrides])
        minutes = (time.perf_counter() - started) / 60
        if code != 0:
            sys.exit(code)
        evals = [r for r in read_metrics(run_dir) if "eval/accuracy" in r]
    first, last = evals[0]["eval/accuracy"], evals[-1]["eval/accuracy"]
    return {
        "seed": seed,
        "sft_accuracy": round(first, 4),
        "final_accuracy": round(last, 4),
        "gain_points": round(100 * (last - first), 1),
        "minutes": round(minutes, 2),
        "curve": [(r["iteration"], round(r["eval/accuracy"], 4)) for r in evals],
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    print(json.dumps(run(args.seed, args.overrides)))
