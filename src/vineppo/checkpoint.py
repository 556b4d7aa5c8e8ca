"""Atomic checkpoints of a training run, and resuming from the newest complete one.

A checkpoint is a directory `checkpoints/iter_NNNNNN/` holding
  policy/            an ordinary Hugging Face model directory (safetensors) with its tokenizer
  value/             the PPO baseline's value network, also a Hugging Face directory (algo.name == "ppo" only)
  trainer_state.pt   optimizer, scheduler, RNG states (python, numpy, torch) and the iteration, which is also
                     the data position (iteration i always draws the prompts seeded by (seed, i)); with a
                     value network also its optimizer and scheduler (`extra_state`)
It is written under a temporary name and renamed into place, and `checkpoints/latest` (a one-line file, itself
replaced atomically) names the newest one, so a run killed at any moment leaves the last good checkpoint.
`trainer_state.pt` is read with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

STATE_FILE = "trainer_state.pt"
POLICY_DIR = "policy"
VALUE_DIR = "value"


def _write_atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def rng_state() -> dict:
    """Every RNG state, as types that `torch.load(weights_only=True)` accepts."""
    kind, keys, pos, has_gauss, cached_gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached_gauss),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached_gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached_gauss))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class DiskSpaceError(OSError):
    """The run directory's disk cannot hold the checkpoints the run will write."""


def checkpoint_bytes(*models) -> int:
    """About the size of one checkpoint: each model's weights plus AdamW's two moments of the same size (a weight
    partitioned by DeepSpeed ZeRO-3 counts in full: `ds_numel`)."""
    return sum(3 * getattr(p, "ds_numel", p.numel()) * p.element_size() for model in models for p in model.parameters())


def check_free_space(run_dir: Path, per_checkpoint: int, keep: int) -> None:
    """Fail before training if `keep` checkpoints, plus the one being written, would not fit on the disk."""
    needed = (keep + 1) * per_checkpoint
    free = shutil.disk_usage(run_dir).free
    if free < needed:
        raise DiskSpaceError(
            f"run directory {run_dir} has {free / 2**30:.2f} GiB free, but {keep} checkpoints of this run and the one "
            f"being written need about {needed / 2**30:.2f} GiB (free some space, or lower logging.keep_checkpoints)"
        )


@dataclass
class Resumed:
    iteration: int  # the number of completed iterations
    policy_dir: Path
    value_dir: Path | None  # None when the run has no value network
    state: dict


def save_checkpoint(
    run_dir: Path, iteration: int, policy, tokenizer, optimizer_state: dict, scheduler, keep: int,
    value_model=None, extra_state: dict | None = None, weights: tuple | list = (None, None),
) -> Path:
    """Write checkpoint `iteration` (the number of completed iterations) atomically; keep the newest `keep`.

    `value_model` is saved as `value/`; `extra_state` (its optimizer and scheduler) joins trainer_state.pt.
    `weights` are the policy's and the value network's full state dicts where the models hold only their shards
    (vineppo.parallel.backend), None where they save themselves."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"iter_{iteration:06d}"
    for stale in root.glob(".iter_*.tmp-*"):  # left by a run killed while writing
        shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f".iter_{iteration:06d}.tmp-{os.getpid()}"
    policy_weights, value_weights = weights
    policy.save_pretrained(tmp / POLICY_DIR, state_dict=policy_weights, safe_serialization=True)
    tokenizer.save_pretrained(tmp / POLICY_DIR)
    if value_model is not None:
        value_model.save_pretrained(tmp / VALUE_DIR, state_dict=value_weights, safe_serialization=True)
    torch.save(
        {
            "iteration": iteration,
            "optimizer": optimizer_state,
            "scheduler": scheduler.state_dict(),
            "rng": rng_state(),
            **(extra_state or {}),
        },
        tmp / STATE_FILE,
    )
    if final.exists():  # a re-run of the same iteration after a resume
        shutil.rmtree(final)
    os.replace(tmp, final)
    _write_atomic_text(root / "latest", final.name + "\n")
    for old in sorted(p for p in root.glob("iter_*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_latest(run_dir: Path) -> Resumed | None:
    """The newest complete checkpoint of a run, or None if it has none."""
    root = Path(run_dir) / "checkpoints"
    pointer = root / "latest"
    if not pointer.is_file():
        return None
    path = root / pointer.read_text().strip()
    state_file = path / STATE_FILE
    if not state_file.is_file():
        raise FileNotFoundError(f"{pointer} names {path.name}, but {state_file} is missing")
    state = torch.load(state_file, weights_only=True)
    value_dir = path / VALUE_DIR if (path / VALUE_DIR).is_dir() else None
    return Resumed(iteration=int(state["iteration"]), policy_dir=path / POLICY_DIR, value_dir=value_dir, state=state)
