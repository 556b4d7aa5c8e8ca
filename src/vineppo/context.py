"""What a method's credit estimator and update read in one iteration, gathered by the trainer in one record."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import torch

from vineppo.config import Config
from vineppo.engine.base import Engine, SamplingParams
from vineppo.parallel.backend import Trained
from vineppo.progress import Bars, make_console
from vineppo.tasks.base import Task

if TYPE_CHECKING:
    from vineppo.credit.critic import Critic


def no_bars() -> Bars:
    return Bars(make_console(quiet=True), enabled=False)


@dataclass
class Context:
    cfg: Config
    engine: Engine
    task: Task
    decode: Callable[[list[int]], str]  # token ids -> text without special tokens (what the grader sees)
    sampling: SamplingParams  # the training rollouts' settings: policy samples and MC rollouts alike
    device: torch.device
    generator: torch.Generator | None = None  # this rank's randomness for the iteration's sampling
    seed: int = 0  # the iteration's seed (the update's shuffling, DPO+'s pairing, the MC rollouts trained on)
    whiten: bool = False  # whiten the advantages (algo.whiten_advantages, or the method's default)
    policy: Trained | None = None  # the policy with its optimizer, schedule and parallel backend
    reference: Any = None  # the frozen KL reference
    critic: Critic | None = None  # the value network of a method that trains one (vineppo.credit.critic)
    bars: Bars = field(default_factory=no_bars)

    @property
    def pad_id(self) -> int:
        return self.engine.pad_token_id
