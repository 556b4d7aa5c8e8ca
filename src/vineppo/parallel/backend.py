"""The run's parallel backend, chosen once from how the process was launched: one object that wraps a trained
model and its optimizer, gathers full weights for generation, saves and restores the optimizer state, and takes
the optimizer step. The trainer and the updates hold no parallel plumbing beyond calling it.

- `Replicated`: one process, or plain data parallelism (every rank holds the whole model; gradients summed over
  the ranks once per step; vineppo.parallel.distributed);
- `FSDP`: an accelerate FSDP config, PyTorch FSDP2 (vineppo.parallel.fsdp);
- `Zero`: an accelerate DeepSpeed config, DeepSpeed ZeRO stages 1-3 (vineppo.parallel.zero).

Checkpoints hold full weights and an optimizer state keyed by parameter position, whatever the backend, so a run
resumes under any of them, on any number of ranks.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable, Iterator, Mapping

import torch

from vineppo.config import ConfigError, TrainConfig
from vineppo.parallel import distributed, fsdp, zero
from vineppo.parallel.stepping import DataParallelStep, FSDPStep, Stepper, ZeroStep

OptimizerFactory = Callable[[Any], torch.optim.Optimizer]  # the model's parameters -> its optimizer


class Replicated:
    """Every rank holds the whole model: nothing to shard, gather or collect."""

    activation_checkpointing = False  # asked for by an FSDP config; model.gradient_checkpointing asks too
    allows_vllm = True

    def wrap(self, model, make_optimizer: OptimizerFactory) -> torch.optim.Optimizer:
        """Prepare `model` for training and build its optimizer."""
        return make_optimizer(model.parameters())

    @contextmanager
    def gathered(self, *models) -> Iterator[None]:
        """Full weights on every rank for the block, with no communication inside it (models that are None are
        left alone). Entering and leaving are collectives: every rank must do both together."""
        yield

    def full_weights(self, model) -> dict[str, torch.Tensor] | None:
        """The full state dict on rank 0's CPU (empty on the others; a collective), or None where the model holds
        its full weights (it saves itself)."""
        return None

    def optimizer_state(self, model, optimizer: torch.optim.Optimizer) -> dict:
        """The optimizer's state in `torch.optim.AdamW.state_dict()`'s format, keyed by parameter position (a
        collective; ranks other than 0 may get {})."""
        return optimizer.state_dict()

    def load_optimizer_state(self, model, optimizer: torch.optim.Optimizer, state: dict) -> None:
        optimizer.load_state_dict(state)

    def stepper(self, model, optimizer: torch.optim.Optimizer, max_grad_norm: float) -> Stepper:
        """How one optimizer step's micro-batch gradients are accumulated, reduced over the ranks and applied."""
        return DataParallelStep(model, optimizer, max_grad_norm)


class Sharded(Replicated):
    """A backend whose models are spread over the ranks: `parallelism` (vineppo.parallel.fsdp or .zero) gathers
    their weights and optimizer states."""

    parallelism: ModuleType
    allows_vllm = False  # vLLM needs the full weights

    def gathered(self, *models):
        return self.parallelism.gathered(*models)

    def full_weights(self, model):
        return self.parallelism.full_weights(model)

    def optimizer_state(self, model, optimizer):
        return self.parallelism.optimizer_state(model, optimizer)

    def load_optimizer_state(self, model, optimizer, state):
        self.parallelism.load_optimizer_state(model, optimizer, state)


@dataclass
class FSDP(Sharded):
    settings: fsdp.FSDPSettings
    parallelism = fsdp

    @property
    def activation_checkpointing(self) -> bool:
        return self.settings.activation_checkpointing

    def wrap(self, model, make_optimizer: OptimizerFactory) -> torch.optim.Optimizer:
        fsdp.shard(model, self.settings)  # before the optimizer exists: it holds the shards
        return make_optimizer(model.parameters())

    def stepper(self, model, optimizer, max_grad_norm):
        return FSDPStep(model, optimizer, max_grad_norm)


@dataclass
class Zero(Sharded):
    settings: zero.ZeroSettings
    train: TrainConfig  # DeepSpeed's batch sizes and clipping come from it
    parallelism = zero

    def wrap(self, model, make_optimizer: OptimizerFactory) -> torch.optim.Optimizer:
        optimizer = make_optimizer(model.parameters())  # DeepSpeed's engine goes around it
        zero.initialize(model, optimizer, self.settings, self.train, micro_batches_per_step(self.train))
        return optimizer

    def stepper(self, model, optimizer, max_grad_norm):
        return ZeroStep(zero.engine_of(model))


def launch_settings(env: Mapping[str, str] = os.environ) -> fsdp.FSDPSettings | zero.ZeroSettings | None:
    """The FSDP or DeepSpeed ZeRO settings of the accelerate config this process was launched with, or None for
    plain data parallelism. A ConfigError names the accelerate config key that cannot be honoured."""
    if distributed.env_flag(env, "ACCELERATE_USE_DEEPSPEED"):
        return zero.settings_from_env(env)
    if distributed.env_flag(env, "ACCELERATE_USE_FSDP"):
        return fsdp.settings_from_env(env)
    return None


def backend_from_launch(train: TrainConfig) -> Replicated:
    """The backend of this process, chosen once: in a multi-process run the one its accelerate config asks for
    (`launch_settings`), `Replicated` otherwise."""
    settings = launch_settings() if distributed.active() else None
    if isinstance(settings, zero.ZeroSettings):
        return Zero(settings, train)
    if isinstance(settings, fsdp.FSDPSettings):
        return FSDP(settings)
    return Replicated()


def micro_batches_per_step(train: TrainConfig) -> int:
    """Micro-batches of this process in one mini-batch: the mini-batch is split over the ranks first. A ConfigError
    when the sizes do not split evenly."""
    world = distributed.world_size()
    if train.mini_batch_size % (world * train.micro_batch_size):
        raise ConfigError(
            f"train.mini_batch_size ({train.mini_batch_size}) must be divisible by the number of processes ({world}) "
            f"x train.micro_batch_size ({train.micro_batch_size})"
        )
    return train.mini_batch_size // world // train.micro_batch_size


@dataclass
class Trained:
    """A model being trained, with its optimizer and learning-rate schedule, wrapped by `backend`."""

    model: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    backend: Replicated = field(default_factory=Replicated)

    def gathered(self):
        return self.backend.gathered(self.model)

    def stepper(self, max_grad_norm: float) -> Stepper:
        return self.backend.stepper(self.model, self.optimizer, max_grad_norm)

    def full_weights(self):
        return self.backend.full_weights(self.model)

    def optimizer_state(self) -> dict:
        return self.backend.optimizer_state(self.model, self.optimizer)

    def load_optimizer_state(self, state: dict) -> None:
        self.backend.load_optimizer_state(self.model, self.optimizer, state)
