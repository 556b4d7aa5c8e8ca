"""DPO+ (DPO-Positive, Pal et al. 2024): the paper's DPO+ baseline, on correct/incorrect pairs of samples.

The paper (PAPER-NOTES 2.11) runs one offline round: 64 samples per question from the SFT model, at most 64 pairs
per question, 3 epochs, beta 0.3 (GSM8K) / 0.1 (MATH), lambda 50. Here, as the issue asks, the pairs come from
the current policy: every iteration pairs the samples of each of its prompts (iterative DPO), and the reference
stays the SFT model, the KL reference of every method. What we chose where the paper is silent:
- pairing is disjoint: a prompt's correct and incorrect samples are shuffled and zipped, so each sample is in at
  most one pair, a prompt gives min(#correct, #incorrect) pairs, and an iteration never trains on more
  sequences than it sampled (the paper's 64 pairs from 64 samples reuse samples). Prompts whose samples are all
  correct or all wrong give no pair;
- log-probs are summed over the response at temperature 1 (the model's own distribution), as DPO defines them;
- a micro-batch holds `micro_batch_size // 2` pairs (so as many sequences as a PPO micro-batch) and a
  mini-batch `mini_batch_size // 2` pairs; the loss is the mean over the mini-batch's pairs.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import torch

from vineppo.config import DPOPlusOptions, TrainConfig
from vineppo.episodes import Episode, TokenBatch, collate, group_by_prompt, join_rows
from vineppo.losses import MiniBatchTotals, dpo_plus_loss
from vineppo.parallel.backend import Trained
from vineppo.tasks.base import CORRECT
from vineppo.update import forward_logprobs, minibatch_steps, planned_steps, policy_stats

if TYPE_CHECKING:
    from vineppo.context import Context


@dataclass
class PairBatch:
    """A micro-batch of P pairs: the chosen (correct) and rejected responses, row by row, with their sequence
    log-probs under the reference model."""

    chosen: TokenBatch
    rejected: TokenBatch
    chosen_ref_logp: torch.Tensor  # [P]
    rejected_ref_logp: torch.Tensor  # [P]

    @cached_property
    def tokens(self) -> TokenBatch:
        """Rows 0..P-1 the chosen responses, P..2P-1 the rejected ones (one forward pass for both)."""
        return join_rows([self.chosen, self.rejected])

    @property
    def ref_logp(self) -> torch.Tensor:
        return torch.cat([self.chosen_ref_logp, self.rejected_ref_logp])


def train_dpo_plus(episodes: list[Episode], ctx: Context) -> dict[str, float]:
    """DPO+'s update: pairs of this iteration's samples (shuffled with the iteration's seed), the reference's
    sequence log-probs, then `dpo_plus_update`."""
    train = ctx.cfg.train
    pairs = make_pairs(episodes, random.Random(ctx.seed))
    batches = prepare_pairs(ctx.reference, pairs, ctx.pad_id, pairs_per_micro_batch(train), ctx.device)
    generator = torch.Generator().manual_seed(ctx.seed)
    with ctx.bars.phase("update", planned_steps(train, len(batches))) as bar:
        stats = dpo_plus_update(ctx.policy, batches, ctx.cfg.algo.dpo_plus, train, generator, on_step=bar.advance)
    return {**stats, "dpo/pairs": len(pairs)}


def pairs_per_micro_batch(train: TrainConfig) -> int:
    """A micro-batch of DPO+ holds half as many pairs as `train.micro_batch_size` (two responses each)."""
    return max(1, train.micro_batch_size // 2)


def make_pairs(episodes: list[Episode], rng: random.Random) -> list[tuple[Episode, Episode]]:
    """(correct, incorrect) pairs within each prompt's samples, each sample in at most one pair."""
    pairs = []
    for group in group_by_prompt(episodes):
        correct = [e for e in group if e.reward >= CORRECT]
        wrong = [e for e in group if e.reward < CORRECT]
        rng.shuffle(correct)
        rng.shuffle(wrong)
        pairs.extend(zip(correct, wrong))
    return pairs


def sequence_logprobs(model, tokens: TokenBatch) -> torch.Tensor:
    """[B]: log pi(response | prompt) at temperature 1."""
    return (forward_logprobs(model, tokens, 1.0) * tokens.response_mask).sum(-1)


@torch.no_grad()
def prepare_pairs(
    reference, pairs: list[tuple[Episode, Episode]], pad_id: int, per_batch: int, device: torch.device
) -> list[PairBatch]:
    """Micro-batches of `per_batch` pairs (`pairs_per_micro_batch`) with the reference's sequence log-probs."""
    batches = []
    for first in range(0, len(pairs), per_batch):
        chunk = pairs[first : first + per_batch]
        chosen = collate([c for c, _ in chunk], pad_id).to(device)
        rejected = collate([r for _, r in chunk], pad_id).to(device)
        batches.append(PairBatch(chosen, rejected, sequence_logprobs(reference, chosen),
                                 sequence_logprobs(reference, rejected)))
    return batches


def dpo_plus_update(
    policy: Trained, batches: list[PairBatch], options: DPOPlusOptions, train: TrainConfig,
    generator: torch.Generator, on_step=None,
) -> dict[str, float]:
    """`train.epochs` passes of DPO+ mini-batch steps over the prepared pairs."""

    def micro_loss(trained, b: PairBatch, totals: MiniBatchTotals) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logp = sequence_logprobs(trained, b.tokens)
        p = len(logp) // 2
        out = dpo_plus_loss(logp[:p], logp[p:], b.ref_logp[:p], b.ref_logp[p:], options.beta, options.lam)
        num_pairs = totals.sequences / 2
        loss = out.losses.sum() / num_pairs
        return loss, {
            "loss/dpo": loss.detach(),
            "dpo/margin": out.margins.sum() / num_pairs,
            "dpo/pair_accuracy": (out.margins > 0).float().sum() / num_pairs,
            "dpo/chosen_drop": out.chosen_drop.sum() / num_pairs,
        }

    stats = minibatch_steps(policy, batches, train, generator, micro_loss, on_step,
                            rows_per_micro_batch=pairs_per_micro_batch(train))
    return policy_stats(stats)
