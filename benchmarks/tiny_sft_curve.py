"""The tiny model's SFT learning curve on a built-in task: greedy test accuracy at a quarter, half, three quarters
and the end of an SFT schedule, one JSON line each (how the forks task's SFT budget is calibrated, docs/tasks.md),
with the most common first errors of the failed responses where the task names them (`first_error`, the forks
task: which check of which line failed first).

    python benchmarks/tiny_sft_curve.py --config configs/forks.yaml --steps 2000 [--problems 128] [overrides...]
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter

import torch

from vineppo.config import load_config
from vineppo.engine import build_engine
from vineppo.evaluate import greedy_rollouts
from vineppo.models import TextCodec, build_char_tokenizer, build_tiny_model
from vineppo.sft.warm_start import train_sft
from vineppo.tasks import build_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--problems", type=int, default=128, help="test problems evaluated at each mark")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    cfg = load_config(args.config, [f"model.tiny.sft.steps={args.steps}", *args.overrides])
    task = build_task(cfg.task)
    tokenizer = build_char_tokenizer(task.alphabet)
    torch.manual_seed(cfg.model.tiny.sft.seed)
    model = build_tiny_model(cfg.model.tiny, tokenizer)
    codec, engine = TextCodec(tokenizer), build_engine(cfg, model, tokenizer, "tiny", None)
    problems = task.test_problems()[: args.problems]
    marks = {round(args.steps * share) for share in (0.25, 0.5, 0.75, 1.0)}
    started = time.perf_counter()

    def on_step(step: int, loss: float) -> None:
        if step in marks:
            model.eval()
            greedy = greedy_rollouts(engine, codec.encode, codec.decode, task, problems, cfg.engine.max_new_tokens)
            model.train()
            figures = {"step": step, "loss": round(loss, 3), "seconds": round(time.perf_counter() - started),
                       "accuracy": sum(r.reward for r in greedy) / len(greedy)}
            if hasattr(task, "first_error"):
                errors = [task.first_error(p, codec.decode(r.completion.token_ids)) for p, r in zip(problems, greedy)]
                figures["first_errors"] = dict(Counter(e for e in errors if e is not None).most_common(6))
            print(json.dumps(figures), flush=True)

    print(json.dumps({"parameters": sum(p.numel() for p in model.parameters())}), flush=True)
    train_sft(model, tokenizer, task.sft_problems(), cfg.model.tiny.sft, on_step)


if __name__ == "__main__":
    main()
