"""The method table: `algo.name` -> (credit estimator, update rule). The trainer runs the chosen row and has no
branch on the name; adding a method is a row here, adding an estimator one file in vineppo.credit plus a row.

The PPO family shares sampling, the PPO-clip + KL update (vineppo.update.train_ppo) and everything else; its
members differ only in their credit estimator. RestEM and DPO+ keep the sampling and replace the update; they read
the rewards alone, so they have no credit estimator.

    credit(episodes, ctx) -> metrics   fills every episode's advantages (vineppo.credit)
    update(episodes, ctx) -> metrics   trains the policy on them, preparing its own batches (ctx: vineppo.context)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from vineppo.config import AlgoConfig
from vineppo.context import Context
from vineppo.credit.critic import critic_credit
from vineppo.credit.group import grpo_credit, rloo_credit
from vineppo.credit.vine import vine_credit
from vineppo.episodes import Episode
from vineppo.preference import train_dpo_plus
from vineppo.restem import train_restem
from vineppo.update import train_ppo

Step = Callable[[list[Episode], Context], dict[str, float]]


@dataclass(frozen=True)
class Method:
    update: Step
    credit: Step | None = None  # None: the update reads the rewards alone
    values: str | None = None  # what the credit's `step_values` are, for the report
    whitens: bool = False  # the default of algo.whiten_advantages
    value_model: bool = False  # trains a value network beside the policy (ctx.critic; vineppo.credit.critic)


METHODS: dict[str, Method] = {
    # the official trainer whitens the advantages of VinePPO and PPO (PAPER-NOTES 2.4); GRPO and RLOO train on
    # theirs as they are (whitening across groups would give a group of equal rewards -mean/std, not 0)
    "vineppo": Method(credit=vine_credit, update=train_ppo, values="MC estimate", whitens=True),
    "ppo": Method(credit=critic_credit, update=train_ppo, values="value network", whitens=True, value_model=True),
    "grpo": Method(credit=grpo_credit, update=train_ppo, values="group mean reward"),
    "rloo": Method(credit=rloo_credit, update=train_ppo, values="group mean reward"),
    "restem": Method(update=train_restem),
    "dpo_plus": Method(update=train_dpo_plus),
}


def whitens(algo: AlgoConfig) -> bool:
    """Whether the advantages are whitened: `algo.whiten_advantages`, or the method's default."""
    return algo.whiten_advantages if algo.whiten_advantages is not None else METHODS[algo.name].whitens
