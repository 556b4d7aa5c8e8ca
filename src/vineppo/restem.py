"""RestEM (ReST-EM, Singh et al. 2024): fine-tune on the policy's own correct samples.

The paper's RestEM (PAPER-NOTES 2.10) alternates an E-step over the whole training set (8 samples per question at
T 0.6; the correct ones kept, at most 10 per question) with an M-step of 8 SFT epochs, 10 times, and picks each
round's checkpoint by validation accuracy. Here it runs in the trainer's loop like every other method, so that it
is compared at equal prompts per iteration and equal wall-clock: an iteration's E-step is its
`prompts_per_iteration` x `samples_per_prompt` samples, and its M-step is `train.epochs` passes of -log pi over
the kept responses (at most `algo.restem.max_per_prompt` per prompt), plus `algo.kl_coef` times the KL penalty
to the reference (the official config sets a KL penalty whose coefficient is not known). Departures, both
configurable by other means: the M-step continues from the current policy instead of restarting from the base
model as ReST-EM does, and there is no checkpoint selection on a validation set (the run's evaluations show
every checkpoint's accuracy).
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

import torch

from vineppo.config import AlgoConfig, TrainConfig
from vineppo.episodes import Episode
from vineppo.losses import MiniBatchTotals, nll_loss, token_weights
from vineppo.parallel.backend import Trained
from vineppo.tasks.base import CORRECT
from vineppo.update import (
    PreparedBatch, forward_logprobs, kl_penalty, minibatch_steps, planned_steps, policy_stats, prepare,
)

if TYPE_CHECKING:
    from vineppo.context import Context


def train_restem(episodes: list[Episode], ctx: Context) -> dict[str, float]:
    """RestEM's update: the kept samples, their log-probs at temperature 1, then `restem_update`."""
    train = ctx.cfg.train
    kept = select_correct(episodes, ctx.cfg.algo.restem.max_per_prompt)
    with ctx.policy.gathered():  # no-grad passes, as many as this rank's samples
        batches, _ = prepare(
            ctx.policy.model, ctx.reference, kept, ctx.pad_id, train.micro_batch_size, temperature=1.0,
            whiten_advantages=False, device=ctx.device, group_by_length=train.group_by_length,
        )
    generator = torch.Generator().manual_seed(ctx.seed)
    with ctx.bars.phase("update", planned_steps(train, len(batches))) as bar:
        stats = restem_update(ctx.policy, batches, ctx.cfg.algo, train, generator, on_step=bar.advance)
    return {**stats, "restem/kept": len(kept) / len(episodes)}


def select_correct(episodes: list[Episode], max_per_prompt: int) -> list[Episode]:
    """The episodes with full reward, at most `max_per_prompt` per prompt (the first ones sampled)."""
    kept, per_prompt = [], Counter()
    for episode in episodes:
        if episode.reward >= CORRECT and per_prompt[episode.prompt_index] < max_per_prompt:
            kept.append(episode)
            per_prompt[episode.prompt_index] += 1
    return kept


def restem_update(
    policy: Trained, batches: list[PreparedBatch], algo: AlgoConfig, train: TrainConfig, generator: torch.Generator,
    on_step=None,
) -> dict[str, float]:
    """`train.epochs` passes of supervised mini-batch steps on the kept responses. Log-probs at temperature 1
    (the model's own distribution, as SFT uses); the batches must be prepared at temperature 1 too."""

    def micro_loss(trained, b: PreparedBatch, totals: MiniBatchTotals) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logp = forward_logprobs(trained, b.tokens, 1.0)
        mask = b.tokens.response_mask
        loss, kl = nll_loss(
            logp, b.old_logp, b.ref_logp, token_weights(mask, algo.loss_aggregation, totals), kl_penalty(algo),
            token_weights(mask, algo.kl_aggregation, totals),
        )
        return loss, {"loss/nll": loss.detach(), "loss/kl": kl}

    return policy_stats(minibatch_steps(policy, batches, train, generator, micro_loss, on_step))
