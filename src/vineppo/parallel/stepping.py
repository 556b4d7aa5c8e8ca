"""How the micro-batch gradients of one optimizer step are accumulated, summed over the ranks and applied.

Three ways, one interface (`Stepper`; the run's backend picks one, vineppo.parallel.backend): plain data
parallelism (every rank holds the whole model; the gradients are all-reduced once per step), FSDP2
(vineppo.parallel.fsdp: FSDP reduce-scatters in each backward) and DeepSpeed ZeRO (vineppo.parallel.zero: the
engine reduces, clips and steps). Where gradients are reduced in each backward,
every rank must run as many backwards per step: `pad` runs zero-loss ones for a rank short of micro-batches.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import torch
from torch.nn.utils import clip_grad_norm_

from vineppo.parallel import distributed, fsdp


class NonFiniteError(ArithmeticError):
    """NaN or inf in a quantity of the update; the message names it."""


def zero_loss(model) -> torch.Tensor:
    """A loss of 0 through every weight of `model`: its backward takes part in the gradient reduction of FSDP or
    ZeRO and adds nothing (for a rank with fewer micro-batches than the others)."""
    device = next(model.parameters()).device
    logits = model(input_ids=torch.zeros((1, 1), dtype=torch.long, device=device)).logits
    return logits.sum() * 0.0


class Stepper(Protocol):
    trained: Any  # what the training forwards run through: the model, or the DeepSpeed engine around it

    def start(self) -> None: ...  # before the step's first backward

    def backward(self, loss: torch.Tensor) -> None: ...

    def pad(self, missing: int) -> None: ...  # a rank short of `missing` micro-batches of the step

    def step(self) -> float: ...  # reduce, clip, step; the gradient norm before clipping


class DataParallelStep:
    """Every rank holds the whole model; gradients are summed over the ranks once, before clipping."""

    def __init__(self, model, optimizer: torch.optim.Optimizer, max_grad_norm: float):
        self.model, self.optimizer, self.max_grad_norm = model, optimizer, max_grad_norm
        self.trained = model  # what the training forwards run through

    def start(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def pad(self, missing: int) -> None:
        """A rank short of `missing` micro-batches adds nothing (its gradients are summed as they are)."""

    def reduce(self) -> None:
        distributed.sum_gradients(self.model)

    def step(self) -> float:
        """Reduce, clip and step; returns the gradient norm before clipping. A NonFiniteError (and no step) when
        the norm is NaN or inf, so that the weights are not poisoned."""
        self.reduce()
        grad_norm = float(fsdp.local_value(clip_grad_norm_(self.model.parameters(), self.max_grad_norm)))
        if not math.isfinite(grad_norm):
            raise NonFiniteError(f"the gradient norm is {grad_norm}")
        self.optimizer.step()
        return grad_norm


class FSDPStep(DataParallelStep):
    """FSDP2 sums the gradients over the ranks in each backward (`fsdp.shard` sets sum, not mean)."""

    def pad(self, missing: int) -> None:
        for _ in range(missing):
            zero_loss(self.model).backward()

    def reduce(self) -> None:
        pass


class ZeroStep:
    """DeepSpeed's engine reduces in each backward (stages 2, 3) or at the step (stage 1), averaging over the
    ranks: losses are multiplied by the number of ranks to make that the sum. `step()` clips to the engine's
    `gradient_clipping` (= train.max_grad_norm) and skips the update itself when the norm is not finite."""

    def __init__(self, engine):
        self.engine = engine
        self.trained = engine
        self.world = distributed.world_size()

    def start(self) -> None:
        pass  # the engine zeroes its gradients after each step

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss * self.world, scale_wrt_gas=False)

    def pad(self, missing: int) -> None:
        for _ in range(missing):
            self.backward(zero_loss(self.engine))

    def step(self) -> float:
        self.engine.step()
        grad_norm = float(self.engine.get_global_grad_norm())
        if not math.isfinite(grad_norm):
            raise NonFiniteError(f"the gradient norm is {grad_norm} (DeepSpeed skipped the step)")
        return grad_norm
