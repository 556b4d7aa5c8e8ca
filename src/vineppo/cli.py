"""Command-line entry points: `vineppo train`, `sft`, `eval`, `analyze values`, `report`, `bench compare`.

Errors a user can fix (a bad config, a missing model or run directory) print one line and exit with code 2;
`--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import torch
from rich.console import Console
from rich.markup import escape  # error messages hold [brackets], e.g. pip extras
from transformers.utils import logging as transformers_logging

from vineppo.parallel import distributed
from vineppo.algorithms import METHODS
from vineppo.analysis.values import AnalysisError, ValueAnalysisSettings, analyze_values
from vineppo.bench.compare import Budget, Evaluation, compare, parse_variant
from vineppo.checkpoint import DiskSpaceError
from vineppo.config import Config, ConfigError, config_to_yaml, load_config
from vineppo.data import DataError
from vineppo.engine.base import ContextLengthError
from vineppo.engine.vllm import VLLMMissingError
from vineppo.evaluate import evaluate_sampled, greedy_metrics, greedy_rollouts, sampled_metrics
from vineppo.model_sources import resolve_model_source
from vineppo.models import (
    ModelLoadError,
    resolve_device,
)
from vineppo.progress import Bars, make_console
from vineppo.report.page import write_report
from vineppo.runlog import CONFIG_FILE, WandbMissingError
from vineppo.setup import build_setup
from vineppo.sft import ensure_sft_model
from vineppo.trainer import Trainer, TrainingError

USAGE_ERROR = 2
TRAINING_FAILED = 1


class UsageError(Exception):
    """An error in what the user supplied; printed as one line."""


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", action="append", metavar="FILE",
                        help="YAML config file (default: the built-in quickstart config); repeat it to layer files, "
                        "later ones winning key by key")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. algo.vineppo.k=9 train.iterations=20")
    parser.add_argument("--skip-bad-rows", action="store_true",
                        help="skip malformed data rows (counted and logged) instead of stopping (gsm8k, math)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def _load(args: argparse.Namespace, paths, overrides: list[str]) -> Config:
    """The config of `paths` + `overrides`, with `--skip-bad-rows` applied to the chosen task's section."""
    cfg = load_config(paths, overrides)
    if args.skip_bad_rows:
        section = getattr(cfg.task, cfg.task.name)
        if "skip_bad_rows" not in type(section).model_fields:
            raise UsageError(f"--skip-bad-rows: task '{cfg.task.name}' reads no data files")
        section.skip_bad_rows = True
    return cfg


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vineppo", description="VinePPO RL fine-tuning of language models")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="SFT warm start (tiny model) + RL training; writes a run directory")
    _add_config_args(train)
    train.add_argument("--run-dir", help="where to write the run (default runs/<timestamp>)")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run from its last checkpoint")

    sft = sub.add_parser("sft", help="supervised fine-tuning on the task's solutions (the policy RL starts from): "
                         "any HF causal LM into a run directory, or the tiny model's cached warm start")
    _add_config_args(sft)
    sft.add_argument("--run-dir", help="where to write the run (default runs/<timestamp>)")
    sft.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped SFT run from its last checkpoint")

    ev = sub.add_parser("eval", help="test accuracy of a model: greedy, and pass@k / maj@k from samples")
    _add_config_args(ev)
    ev.add_argument("--model", required=True, help="model directory, hub id, .gguf file or smollm2-135m-instruct")
    ev.add_argument("--task", help="task name (default: task.name of the config)")
    ev.add_argument("--samples", type=int, default=0, metavar="K",
                    help="also sample K responses per problem: pass@1, pass@K, maj@K (the paper: 16 at T = 0.35)")
    ev.add_argument("--temperature", type=float, default=0.35, help="sampling temperature for --samples")
    ev.add_argument("--seed", type=int, default=0, help="sampling seed for --samples")
    ev.add_argument("--output", help="write the metrics (and per-problem sampled results) as JSON here")

    analyze = sub.add_parser("analyze", help="the paper's analyses of a trained run")
    analyses = analyze.add_subparsers(dest="analysis", required=True)
    values = analyses.add_parser(
        "values", help="value-prediction error and step-ranking accuracy of the MC estimate and a value network"
    )
    values.add_argument("--run", required=True, metavar="RUN_DIR", help="the run whose latest checkpoint to analyse")
    values.add_argument(
        "--value-run", metavar="RUN_DIR", help="a PPO run whose value network to use (default: the run's own)"
    )
    values.add_argument("--states", type=int, default=256, help="held-out states (default 256, as the paper)")
    values.add_argument(
        "--ground-truth-rollouts", type=int, default=256, help="rollouts per ground-truth value (default 256)"
    )
    values.add_argument("--k", type=int, help="rollouts of the MC estimate (default: the run's algo.vineppo.k)")
    values.add_argument("--seed", type=int, default=0)
    values.add_argument("--output", help="the JSON to write, PNGs beside it (default RUN_DIR/analysis/values.json)")
    values.add_argument("--debug", action="store_true", help="show tracebacks")

    report = sub.add_parser("report", help="an HTML page of a run: curves and sampled responses with their credit")
    report.add_argument("run", metavar="RUN_DIR")
    report.add_argument("--output", help="the HTML file to write (default RUN_DIR/report.html)")
    report.add_argument("--iterations", nargs="+", type=int, metavar="N",
                        help="iterations whose samples to show (default: the first, middle and last)")
    report.add_argument("--debug", action="store_true", help="show tracebacks")

    bench = sub.add_parser("bench", help="benchmarks that print their figures")
    benches = bench.add_subparsers(dest="bench", required=True)
    comparison = benches.add_parser(
        "compare", help="every method from one SFT model at equal training seconds (docs/results.md)"
    )
    _add_config_args(comparison)
    comparison.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS), metavar="NAME",
                            help=f"methods to run (default: all of {', '.join(METHODS)})")
    comparison.add_argument("--k", nargs="*", type=int, default=[], metavar="K",
                            help="also run VinePPO with these K (the K ablation; the config's own K runs as "
                                 "plain \"vineppo\" when that is among --methods), e.g. --k 1 3")
    comparison.add_argument("--variant", action="append", default=[], metavar="LABEL:KEY=VALUE,...",
                            help="also run the shared config with these overrides under LABEL (repeatable), e.g. "
                                 "'vineppo K=3 reuse:algo.vineppo.k=3,algo.vineppo.reuse_samples=true'")
    comparison.add_argument("--budget", type=float, default=120.0, help="training seconds per run (default 120)")
    comparison.add_argument("--eval-seconds", type=float, default=10.0,
                            help="training seconds between evaluations (default 10)")
    comparison.add_argument("--iterations", type=int, metavar="N",
                            help="also stop each run after N iterations (equal policy samples; give a --budget "
                                 "that every run needs more than N iterations to spend)")
    comparison.add_argument("--eval-iterations", type=int, metavar="M",
                            help="also evaluate every M iterations (for the AUC over iterations)")
    comparison.add_argument("--out", default="runs/compare",
                            help="output directory (default runs/compare); a finished run in it is not run again")
    comparison.add_argument("--seeds", type=int, default=1,
                            help="seeds per run: train.seed 0..N-1 (RL sampling and prompt order; default 1)")
    comparison.add_argument("--baseline", metavar="NAME", help="report paired differences (same seed) against it")
    comparison.add_argument("--marks", nargs="*", type=float, metavar="S",
                            help="training seconds to report test accuracy at (default: budget/4, /2, budget)")
    comparison.add_argument("--thresholds", nargs="*", type=float, metavar="ACC",
                            help="accuracies to report the seconds and tokens to (default: the SFT model's + 0.1, "
                                 "+ 0.2)")
    comparison.add_argument("--eval-samples", type=int, default=0, metavar="N",
                            help="test accuracy as the mean of N samples per problem (default 0: greedy)")
    comparison.add_argument("--eval-temperature", type=float, default=0.35,
                            help="the temperature of --eval-samples (default 0.35, the paper's)")
    return parser


def _prepare_run_dir(path: Path) -> Path:
    """Create the run directory and prove it is writable before any work starts."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"run directory {path} is not writable: {exc.strerror or exc}") from None
    return path


def _open_run(args: argparse.Namespace, console: Console, cfg: Config | None = None) -> tuple[Config, Path, bool]:
    """The config and run directory of `train` / `sft` (`--resume RUN_DIR`: the run's own config.yaml plus
    overrides; else `cfg` if the caller loaded it already), and whether the directory was created here. Starts the
    process group under a launcher."""
    if args.resume:
        run_dir = Path(args.resume)
        saved = run_dir / CONFIG_FILE
        if not saved.is_file():
            raise UsageError(f"--resume {run_dir}: no {CONFIG_FILE} there (is it a vineppo run directory?)")
        if args.config:
            raise UsageError("--resume uses the run's own config.yaml; pass overrides, not --config")
        cfg = _load(args, saved, args.overrides)
    else:
        cfg = cfg or _load(args, args.config, args.overrides)
        default_dir = Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = Path(args.run_dir or cfg.logging.run_dir or default_dir)
        if (run_dir / CONFIG_FILE).exists():
            raise UsageError(f"{run_dir} already holds a run: continue it with --resume {run_dir}, or pick another --run-dir")
    distributed.init(cpu=resolve_device(cfg.model.device).type == "cpu")
    run_dir = distributed.from_main(run_dir)  # the ranks' clocks may name different default directories
    created = not run_dir.exists()
    _prepare_run_dir(run_dir)
    distributed.barrier()  # every rank has checked the directory before rank 0 writes into it
    if distributed.is_main():
        console.print(f"run directory: {run_dir}")
    return cfg, run_dir, created


@contextmanager
def _removed_on_failure(run_dir: Path, created: bool):
    """A run that stops before it has a checkpoint (a config, model or data error; an interrupt before the first
    checkpoint) leaves no run directory behind; one with a checkpoint is kept for --resume."""
    try:
        yield
    except BaseException:
        if created and distributed.is_main() and not (run_dir / "checkpoints").exists():
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def cmd_train(args: argparse.Namespace, console: Console) -> None:
    started = time.perf_counter()
    cfg, run_dir, created = _open_run(args, console)
    with _removed_on_failure(run_dir, created):
        trainer = Trainer(cfg, run_dir, console, resume=bool(args.resume))
    summary = trainer.train()
    if not distributed.is_main():
        return
    minutes = (time.perf_counter() - started) / 60
    gain = 100 * (summary.final_accuracy - summary.initial_accuracy)
    console.print(
        f"vineppo train: greedy test accuracy {summary.initial_accuracy:.1%} before RL -> "
        f"{summary.final_accuracy:.1%} after {summary.iterations} iterations ({gain:+.1f} points), "
        f"seed {cfg.train.seed}, {minutes:.1f} min in all; run in {run_dir}",
        soft_wrap=True,
    )


def cmd_sft(args: argparse.Namespace, console: Console) -> None:
    cfg = None if args.resume else _load(args, args.config, args.overrides)
    run_dir = None
    if cfg is not None and cfg.model.path == "tiny":
        if args.run_dir:
            raise UsageError("--run-dir: the tiny model's warm start is cached (model.tiny.sft), not a run")
        path = ensure_sft_model(cfg, console=console)
    else:
        # imported here, not above: importing transformers' Trainer takes seconds
        from vineppo.sft.stage import run_sft

        cfg, run_dir, created = _open_run(args, console, cfg)
        if distributed.is_main():
            (run_dir / CONFIG_FILE).write_text(config_to_yaml(cfg))
        with _removed_on_failure(run_dir, created):
            path = run_sft(cfg, run_dir, console, resume=bool(args.resume))
        if not distributed.is_main():
            return
    metrics, _ = _evaluate(cfg, str(path), console)
    if run_dir is not None:
        (run_dir / "eval.json").write_text(json.dumps(metrics, indent=1))
    console.print(
        f"vineppo sft: model in {path}; greedy test accuracy {metrics['eval/accuracy']:.1%} "
        f"(no answer {metrics['eval/unparsed']:.1%}, cut off {metrics['eval/truncated']:.1%}); "
        f"train from it with: vineppo train model.path={path}",
        soft_wrap=True,
    )


def _evaluate(
    cfg: Config, model_path: str, console: Console, samples: int = 0, temperature: float = 0.35, seed: int = 0
) -> tuple[dict[str, float], list[dict]]:
    """Greedy metrics and, with `samples` > 0, pass@1 / pass@k / maj@k from that many samples per problem
    (top-p engine.top_p); returns the metrics and the per-problem sampled results."""
    device = resolve_device(cfg.model.device)
    setup = build_setup(cfg, model_path, device)  # beside vLLM, no second copy of the weights in PyTorch
    task, engine = setup.task, setup.engine
    problems = task.test_problems()
    encode, decode = setup.codec.encode, setup.codec.decode
    per_problem: list[dict] = []
    with Bars(console, cfg.logging.progress) as bars:
        with bars.phase("eval (greedy)", len(problems)) as bar:
            metrics = greedy_metrics(greedy_rollouts(
                engine, encode, decode, task, problems, cfg.engine.max_new_tokens, on_progress=bar.advance
            ))
        if samples:
            params = replace(setup.rollouts, temperature=temperature)
            generator = torch.Generator(device=device).manual_seed(seed)
            with bars.phase(f"eval ({samples} samples, T = {temperature})", len(problems)) as bar:
                results = evaluate_sampled(
                    engine, encode, decode, task, problems, samples, params, generator, on_progress=bar.advance
                )
            metrics.update(sampled_metrics(problems, results, samples))
            per_problem = [vars(r) for r in results]
    return metrics, per_problem


def cmd_eval(args: argparse.Namespace, console: Console) -> None:
    overrides = list(args.overrides) + ([f"task.name={args.task}"] if args.task else [])
    cfg = _load(args, args.config, overrides)
    if args.samples < 0:
        raise UsageError(f"--samples must be >= 0, got {args.samples}")
    model_path = resolve_model_source(args.model, cfg.model.trust_remote_code)
    metrics, per_problem = _evaluate(cfg, model_path, console, args.samples, args.temperature, args.seed)
    line = (
        f"vineppo eval: {args.model} on {cfg.task.name}: greedy accuracy {metrics['eval/accuracy']:.1%} "
        f"(no answer {metrics['eval/unparsed']:.1%}, cut off {metrics['eval/truncated']:.1%})"
    )
    if args.samples:
        k = args.samples
        line += (
            f"; {k} samples at T = {args.temperature}: pass@1 {metrics['eval/pass@1']:.1%}, "
            f"pass@{k} {metrics[f'eval/pass@{k}']:.1%}, maj@{k} {metrics[f'eval/maj@{k}']:.1%}"
        )
    console.print(line, soft_wrap=True)
    if args.output:
        record = {"model": args.model, "task": cfg.task.name, "samples": args.samples,
                  "temperature": args.temperature, "metrics": metrics, "problems": per_problem}
        Path(args.output).write_text(json.dumps(record, indent=1))


def cmd_analyze(args: argparse.Namespace, console: Console) -> None:
    """`analyze values` (the only analysis so far)."""
    try:
        settings = ValueAnalysisSettings(args.states, args.ground_truth_rollouts, args.k, args.seed)
        analyze_values(
            Path(args.run), settings, Path(args.value_run) if args.value_run else None,
            Path(args.output) if args.output else None, console,
        )
    except AnalysisError as exc:
        raise UsageError(str(exc)) from None


def cmd_report(args: argparse.Namespace, console: Console) -> None:
    try:
        path = write_report(Path(args.run), Path(args.output) if args.output else None, args.iterations)
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None
    console.print(f"vineppo report: wrote {path}")


def cmd_bench(args: argparse.Namespace, console: Console) -> None:
    """`bench compare` (the only benchmark so far)."""
    markdown = compare(
        args.methods, args.k, Budget(args.budget, args.eval_seconds, args.iterations, args.eval_iterations),
        Path(args.out), args.config, args.overrides, console,
        seeds=list(range(args.seeds)), baseline=args.baseline, marks=args.marks, thresholds=args.thresholds,
        evaluation=Evaluation(args.eval_samples, args.eval_temperature),
        variants=[parse_variant(v) for v in args.variant],
    )
    print(markdown)


COMMANDS = {"train": cmd_train, "sft": cmd_sft, "eval": cmd_eval, "analyze": cmd_analyze, "report": cmd_report,
            "bench": cmd_bench}


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    transformers_logging.disable_progress_bar()  # our own bars show progress; theirs would interleave
    distributed.quiet_deepspeed()
    console = make_console()
    try:
        COMMANDS[args.command](args, console)
    except (
        ConfigError, ContextLengthError, DataError, DiskSpaceError, ModelLoadError, UsageError, VLLMMissingError,
        WandbMissingError,
    ) as exc:
        if args.debug:
            raise
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return USAGE_ERROR
    except TrainingError as exc:
        if args.debug:
            raise
        console.print(f"[bold red]training stopped:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return TRAINING_FAILED
    except KeyboardInterrupt:
        console.print("interrupted; resume with --resume RUN_DIR from the last checkpoint")
        return 130
    finally:
        distributed.shutdown()  # a no-op alone; under a launcher every rank gets here, stopped or not
    return 0


if __name__ == "__main__":
    sys.exit(main())
