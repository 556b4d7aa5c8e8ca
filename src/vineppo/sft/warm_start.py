"""The built-in tiny model's warm start: teach it the task's format before RL, and cache the result.

RL needs a policy that is right on some problems and wrong on others. The built-in tiny model starts from random
weights, so it is first trained on the task's SFT demonstrations (`task.sft_problems()`: for the arithmetic task, a
fallible teacher's, see tasks/arithmetic.py) until it has converged (config `model.tiny.sft`); the teacher's
misconceptions, not an early stop, place its greedy test accuracy in the band where RL has room to improve. The
result is cached under `$VINEPPO_CACHE/sft/<hash>/`, keyed by everything that determines it, so a second run
starts RL at once.

This is a plain loop, not transformers' Trainer (which `vineppo sft` uses for every other model, vineppo.sft.stage):
in a multi-process RL run rank 0 alone fills the cache while the others wait, and Trainer would make that one
process join the run's process group.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from vineppo.config import Config, ConfigError, TinySFTConfig
from vineppo.model_sources import cache_root
from vineppo.models import build_char_tokenizer, build_tiny_model, resolve_device
from vineppo.progress import bars_shown, make_console
from vineppo.sft.examples import collate, encode_examples
from vineppo.tasks import BUILT_IN_TASKS, build_task
from vineppo.tasks.base import Problem

FORMAT_VERSION = 2
"""Bump when the tokenizer, model or SFT recipe changes in a way the configs do not capture: old caches are then
ignored."""


def _warmup_cosine(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """Linear warmup to 1, then cosine decay to 0 at the last step: the final weights are the settled ones."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def train_sft(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    problems: list[Problem],
    cfg: TinySFTConfig,
    on_step: Callable[[int, float], None] | None = None,
) -> dict[str, float]:
    """Next-token loss on the solution and eos tokens (the prompt is masked), `cfg.steps` AdamW steps, the
    gradient clipped to `cfg.max_grad_norm`.

    Batches walk through reshuffled epochs of `problems`, the order drawn from `cfg.seed`. `on_step(step, loss)` is
    called after each step (step counts from 1). Returns the first and final loss (the latter averaged over the
    last 10 steps), the seconds taken and the training throughput in tokens/s (padding excluded).
    """
    device = next(model.parameters()).device
    examples = encode_examples(tokenizer, problems)
    generator = torch.Generator().manual_seed(cfg.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine(cfg.warmup_steps, cfg.steps))
    model.train()
    order: list[int] = []
    losses: list[float] = []
    tokens = 0
    start = time.perf_counter()
    for step in range(1, cfg.steps + 1):
        if len(order) < cfg.batch_size:
            order += torch.randperm(len(examples), generator=generator).tolist()
        chosen, order = order[: cfg.batch_size], order[cfg.batch_size :]
        batch = {k: v.to(device) for k, v in collate([examples[i] for i in chosen], tokenizer.pad_token_id).items()}
        loss = model(**batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        tokens += int(batch["attention_mask"].sum())
        losses.append(loss.item())
        if on_step is not None:
            on_step(step, losses[-1])
    seconds = time.perf_counter() - start
    model.eval()
    tail = losses[-10:]
    return {
        "first_loss": losses[0],
        "final_loss": sum(tail) / len(tail),
        "seconds": seconds,
        "tokens_per_second": tokens / seconds,
    }


def cache_dir() -> Path:
    """Root of the SFT cache: `$VINEPPO_CACHE/sft` (default ~/.cache/vineppo/sft)."""
    return cache_root() / "sft"


def _cache_key(cfg: Config) -> dict:
    return {
        "format": FORMAT_VERSION,
        "task": {"name": cfg.task.name, cfg.task.name: getattr(cfg.task, cfg.task.name).model_dump(mode="json")},
        "tiny": cfg.model.tiny.model_dump(mode="json", exclude={"sft"}),  # the keys of caches made before
        "sft": cfg.model.tiny.sft.model_dump(mode="json"),  # model.tiny.sft was model.sft: they stay valid
    }


def _is_complete(path: Path) -> bool:
    """sft.json is written last, and the directory only appears by an atomic rename, so this means complete."""
    return (path / "sft.json").is_file()


def ensure_sft_model(cfg: Config, progress: bool | None = None, console: Console | None = None) -> Path:
    """The directory of the SFT-trained tiny model for `cfg` (model.path must be "tiny"), training it if needed.

    The directory holds the model (safetensors) and tokenizer, and opens with `AutoModelForCausalLM` /
    `AutoTokenizer.from_pretrained`; `sft.json` records the hashed config and the training stats. Training runs on
    `cfg.model.device` under a forked RNG seeded by `model.tiny.sft.seed`, so it neither depends on nor disturbs the
    caller's random state. `progress` (default `cfg.logging.progress`) draws a bar with ETA on stderr.
    """
    if cfg.model.path != "tiny":
        raise ValueError(f"ensure_sft_model needs model.path == 'tiny' (got '{cfg.model.path}')")
    if cfg.task.name not in BUILT_IN_TASKS:
        raise ConfigError(
            f"model.path: the built-in tiny model (model.path=tiny) reads only the built-in tasks' characters "
            f"({', '.join(BUILT_IN_TASKS)}); "
            f"for task.name={cfg.task.name} give a Hugging Face causal LM (model.path=HUB_ID_OR_DIR, or "
            f"model.path=smollm2-135m-instruct)"
        )
    key = _cache_key(cfg)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    final = cache_dir() / digest
    console = console or make_console()
    if _is_complete(final):
        console.print(f"SFT warm start: reusing {final}")
        return final

    sft = cfg.model.tiny.sft
    task = build_task(cfg.task)
    tokenizer = build_char_tokenizer(task.alphabet)
    bar = Progress(
        TextColumn("SFT warm start"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.3f}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not bars_shown(console, cfg.logging.progress if progress is None else progress),
    )
    with torch.random.fork_rng(devices=[]), bar:
        torch.manual_seed(sft.seed)
        model = build_tiny_model(cfg.model.tiny, tokenizer).to(resolve_device(cfg.model.device))
        bar_task = bar.add_task("sft", total=sft.steps, loss=float("nan"))
        stats = train_sft(
            model, tokenizer, task.sft_problems(), sft, on_step=lambda _, loss: bar.update(bar_task, advance=1, loss=loss)
        )

    tmp = final.with_name(f"{digest}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)  # transformers 5 always writes safetensors
    tokenizer.save_pretrained(tmp)
    (tmp / "sft.json").write_text(json.dumps({"key": key, "stats": stats}, indent=2))
    try:
        os.replace(tmp, final)
    except OSError:
        if not _is_complete(final):  # not a concurrent run that finished first
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    console.print(
        f"SFT warm start: {sft.steps} steps in {stats['seconds']:.0f} s, loss {stats['final_loss']:.3f}, saved {final}"
    )
    return final
