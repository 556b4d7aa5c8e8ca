"""The PPO update over one iteration's episodes: old/reference log-probs, whitening, epochs of mini-batches.

Old log-probs are recomputed by the trainer's own forward pass (not taken from the sampler), so the importance
ratio starts at exactly 1; the gap to the sampler's log-probs is logged. Log-probs use logits / T with the
sampling temperature T, as the official code does (PAPER-NOTES 2.4).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Callable

import torch

from vineppo.config import AlgoConfig, TrainConfig
from vineppo.episodes import Episode, TokenBatch, collate, join_rows, row_tokens, split_rows
from vineppo.losses import (
    KLPenalty, MiniBatchTotals, entropy_from_logits, ppo_policy_loss, token_logprobs, token_weights, whiten,
)
from vineppo.parallel import distributed
from vineppo.parallel.backend import Trained, micro_batches_per_step
from vineppo.parallel.stepping import NonFiniteError

if TYPE_CHECKING:
    from vineppo.context import Context


@dataclass
class PreparedBatch:
    """A micro-batch on the device with everything the loss needs except the current policy's log-probs."""

    tokens: TokenBatch
    old_logp: torch.Tensor
    ref_logp: torch.Tensor


def forward_logprobs(model, tokens: TokenBatch, temperature: float, with_entropy: bool = False):
    logits = model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).logits[:, :-1]
    logp = token_logprobs(logits, tokens.input_ids[:, 1:], temperature)
    if not with_entropy:
        return logp
    with torch.no_grad():
        entropy = entropy_from_logits(logits, temperature)
    return logp, entropy


def micro_batches(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def by_length(episodes: list[Episode]) -> list[int]:
    """The episodes' indices, shortest (prompt + response) first; ties in their order."""
    return sorted(range(len(episodes)), key=lambda i: len(episodes[i].prompt_ids) + len(episodes[i].response_ids))


@torch.no_grad()
def prepare(
    policy, reference, episodes: list[Episode], pad_id: int, micro_batch_size: int, *, temperature: float,
    whiten_advantages: bool, device: torch.device, group_by_length: bool = False,
) -> tuple[list[PreparedBatch], dict[str, float]]:
    """Collate micro-batches and compute old and reference log-probs at `temperature` (the sampling temperature
    for PPO, whose ratio is to the sampling policy; 1 for RestEM's supervised loss); with `whiten_advantages`,
    whiten the advantages over the iteration (algo.whiten_scope "iteration"). With `group_by_length`
    (train.group_by_length) the passes run over episodes of similar length; either way the micro-batches returned
    hold the episodes in their order, so the update draws the same mini-batches."""
    was_training = policy.training
    policy.eval()
    passes = micro_batches(by_length(episodes) if group_by_length else list(range(len(episodes))), micro_batch_size)
    batches, gap_sum, tokens_total = [], 0.0, 0.0
    for indices in passes:
        tokens = collate([episodes[i] for i in indices], pad_id).to(device)
        old_logp = forward_logprobs(policy, tokens, temperature)
        ref_logp = forward_logprobs(reference, tokens, temperature)
        gap_sum += ((old_logp - tokens.sample_logprobs).abs() * tokens.response_mask).sum().item()
        tokens_total += tokens.response_mask.sum().item()
        batches.append(PreparedBatch(tokens, old_logp, ref_logp))
    policy.train(was_training)
    if group_by_length:
        batches = in_episode_order(batches, passes, micro_batch_size)
    if whiten_advantages:
        batches = whitened(batches)
    return batches, {"logprob_gap/sampler_vs_trainer": gap_sum / max(tokens_total, 1.0)}


def in_episode_order(batches: list[PreparedBatch], passes: list[list[int]], size: int) -> list[PreparedBatch]:
    """`batches`, whose rows are the episodes numbered in `passes`, recut into micro-batches of `size` episodes in
    their own order."""
    rows: list = [None] * sum(map(len, passes))
    for indices, batch in zip(passes, batches):
        for i, row in zip(indices, split_rows(batch)):
            rows[i] = row
    return [join_rows(group) for group in micro_batches(rows, size)]


def whitened(batches: list[PreparedBatch]) -> list[PreparedBatch]:
    """The micro-batches with their advantages whitened together: mean and std over all their response tokens,
    and over the same call's micro-batches of every other rank (a collective: every rank calls it, with or
    without micro-batches)."""
    if not batches and not distributed.active():
        return batches
    flat_adv = torch.cat([b.tokens.advantages.flatten() for b in batches] or [torch.zeros(0)])
    flat_mask = torch.cat([b.tokens.response_mask.flatten() for b in batches] or [torch.zeros(0)])
    white = whiten(flat_adv, flat_mask, reduce=distributed.sum_over_ranks)
    out, offset = [], 0
    for b in batches:
        n = b.tokens.advantages.numel()
        tokens = replace(b.tokens, advantages=white[offset : offset + n].view_as(b.tokens.advantages))
        out.append(replace(b, tokens=tokens))
        offset += n
    return out


def kl_penalty(algo: AlgoConfig) -> KLPenalty:
    return KLPenalty(algo.kl_coef, algo.kl_estimator, algo.kl_gradient, algo.kl_clip)


MicroLoss = Callable[[Any, Any, MiniBatchTotals], tuple[torch.Tensor, dict[str, torch.Tensor]]]
"""(model to run the forward through, micro-batch, its mini-batch's totals) -> (loss to backpropagate, detached
statistics summed over the step). The model is the trained one or the DeepSpeed engine around it. A micro-batch
is any object with a `tokens: TokenBatch`."""


def minibatch_steps(
    trained: Trained, batches: list, train: TrainConfig, generator: torch.Generator, micro_loss: MicroLoss,
    on_step=None, per_mini_batch: Callable[[list], list] | None = None, rows_per_micro_batch: int | None = None,
    micro_batches: int | None = None,
) -> dict[str, float]:
    """`train.epochs` passes over the rows of `batches` (episodes; DPO+'s pairs) in shuffled order, one clipped
    optimizer step per mini-batch: each epoch draws this rank's share of every mini-batch from the shuffled rows
    and cuts it into `micro_batches` micro-batches (default: `train`'s) of `rows_per_micro_batch` rows (default
    `train.micro_batch_size`), as the official trainer draws mini-batches from shuffled episodes; with
    `train.group_by_length`, cut after sorting them by length (`row_tokens`), so a micro-batch pads less.

    Each micro-batch's loss is normalised by the totals of its whole mini-batch (response tokens, responses; over
    every rank of a data-parallel run), so accumulating the micro-batch gradients, and summing them over the
    ranks, gives exactly the mini-batch's mean. Shared by every update (policy, value network, RestEM, DPO+), so
    that with generators seeded alike they visit the same mini-batches. Every rank takes as many steps as the
    rank with the most micro-batches (RestEM and DPO+ keep different numbers of samples on each rank); a rank out
    of micro-batches contributes zero gradients (vineppo.parallel.stepping: with a sharded model, by backward
    passes of a zero loss).
    `per_mini_batch(micro-batches)`, when given, turns each step's micro-batches into the ones to train on (every
    rank calls it once per step, also with none: it may be a collective; PPO whitens advantages with it).
    Returns the per-step means of `micro_loss`'s statistics, of `grad_norm` (before clipping) and of `lr` (the rate
    each step took; the schedule's current one if none was taken), and `tokens`: this rank's tokens (prompt +
    response) through the training forwards and backwards, every epoch counted (the cost model of
    vineppo.bench.cost), and `padded_tokens`: the positions of those passes' tensors, padding included.
    """
    per_step = micro_batches or micro_batches_per_step(train)
    micro = rows_per_micro_batch or train.micro_batch_size
    rows = [row for batch in batches for row in split_rows(batch)]
    lengths = [row_tokens(row) for row in rows] if train.group_by_length else None
    rows_per_step = per_step * micro
    steps_per_epoch = distributed.max_over_ranks(math.ceil(len(rows) / rows_per_step))
    gradients = trained.stepper(train.max_grad_norm)
    sums: dict[str, float] = {}
    steps, trained_tokens, padded_tokens = 0, 0, 0
    trained.model.train()
    for _ in range(train.epochs):
        order = torch.randperm(len(rows), generator=generator).tolist()
        for first in range(0, steps_per_epoch * rows_per_step, rows_per_step):
            picked = order[first : first + rows_per_step]
            if lengths is not None:  # train.group_by_length: micro-batches of rows of similar length
                picked = sorted(picked, key=lengths.__getitem__)
            drawn = [rows[i] for i in picked]
            group = [join_rows(drawn[j : j + micro]) for j in range(0, len(drawn), micro)]
            if per_mini_batch is not None:
                group = per_mini_batch(group)
            local = [sum(b.tokens.response_mask.sum().item() for b in group), sum(len(b.tokens.input_ids) for b in group)]
            tokens, sequences = distributed.sum_over_ranks(torch.tensor(local, dtype=torch.float64)).tolist()
            totals = MiniBatchTotals(tokens=tokens, sequences=sequences)
            trained_tokens += sum(int(b.tokens.attention_mask.sum().item()) for b in group)
            padded_tokens += sum(b.tokens.attention_mask.numel() for b in group)
            gradients.start()
            step_stats: dict[str, float] = {}
            for b in group:
                loss, stats = micro_loss(gradients.trained, b, totals)
                gradients.backward(loss)
                for name, value in stats.items():
                    step_stats[name] = step_stats.get(name, 0.0) + float(value)
            gradients.pad(per_step - len(group))
            step_stats = distributed.sum_dicts(step_stats)  # each rank's are its share of the mini-batch's
            try:
                grad_norm = gradients.step()
            except NonFiniteError as exc:  # raised before the step could poison the weights
                losses = ", ".join(f"{k} {v}" for k, v in step_stats.items() if k.startswith("loss/"))
                raise NonFiniteError(f"{exc} ({losses})") from None
            step_stats["lr"] = trained.scheduler.get_last_lr()[0]
            trained.scheduler.step()
            step_stats["grad_norm"] = grad_norm
            for name, value in step_stats.items():
                sums[name] = sums.get(name, 0.0) + value
            steps += 1
            if on_step is not None:
                on_step()
    stats = {name: value / steps for name, value in sums.items()}
    stats.setdefault("lr", trained.scheduler.get_last_lr()[0])
    stats["tokens"], stats["padded_tokens"] = trained_tokens, padded_tokens
    return stats


def ppo_update(
    policy: Trained, batches: list[PreparedBatch], algo: AlgoConfig, train: TrainConfig, temperature: float,
    generator: torch.Generator, on_step=None, whiten: bool = False, micro_batches: int | None = None,
) -> dict[str, float]:
    """`train.epochs` passes of PPO-clip + KL mini-batch steps over the prepared micro-batches, `micro_batches` of
    them per step (with `whiten` under algo.whiten_scope "mini_batch", whitening their advantages per mini-batch;
    `prepare` whitens the iteration's)."""
    penalty = kl_penalty(algo)

    def micro_loss(trained, b: PreparedBatch, totals: MiniBatchTotals) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logp, entropy = forward_logprobs(trained, b.tokens, temperature, with_entropy=True)
        mask = b.tokens.response_mask
        weights = token_weights(mask, algo.loss_aggregation, totals)
        out = ppo_policy_loss(
            logp, b.old_logp, b.ref_logp, b.tokens.advantages, weights, algo.clip_range, penalty,
            token_weights(mask, algo.kl_aggregation, totals),
        )
        skipped = algo.ratio_threshold is not None and out.mean_ratio.item() > algo.ratio_threshold
        return out.loss * (0.0 if skipped else 1.0), {
            "loss/policy": out.pg_loss, "loss/kl": out.kl, "loss/clipfrac": out.clip_fraction,
            "loss/approx_kl": out.approx_kl, "loss/skipped": torch.tensor(float(skipped)),
            "policy/entropy": (entropy * weights).sum(),
        }

    per_mini_batch = whitened if whiten and algo.whiten_scope == "mini_batch" else None
    stats = minibatch_steps(
        policy, batches, train, generator, micro_loss, on_step, per_mini_batch=per_mini_batch,
        micro_batches=micro_batches,
    )
    return policy_stats(stats)


def train_ppo(episodes: list[Episode], ctx: Context) -> dict[str, float]:
    """The PPO family's update: old and reference log-probs at the sampling temperature, then `ppo_update`; and,
    for a method with a value network (ctx.critic), the value network's epochs over the same micro-batches.
    Rollouts trained as episodes (`Episode.rollout`) join the samples' mini-batches rather than adding steps, so
    an iteration takes the same optimizer steps (and learning-rate schedule) with them as without; with
    `algo.drop_zero_advantage` the episodes are first cut to their nonzero advantages, and may take fewer."""
    algo, train = ctx.cfg.algo, ctx.cfg.train
    micro_batches = micro_batches_with_rollouts(episodes, train)
    kept = nonzero_advantage_part(episodes) if algo.drop_zero_advantage else episodes
    temperature = ctx.sampling.temperature
    with ctx.policy.gathered():  # no-grad passes, as many as this rank's episodes kept
        batches, gap = prepare(
            ctx.policy.model, ctx.reference, kept, ctx.pad_id, train.micro_batch_size, temperature=temperature,
            whiten_advantages=ctx.whiten and algo.whiten_scope == "iteration", device=ctx.device,
            group_by_length=train.group_by_length,
        )
    generator = torch.Generator().manual_seed(ctx.seed)
    with ctx.bars.phase("update", planned_steps(train, len(batches), micro_batches)) as bar:
        stats = ppo_update(
            ctx.policy, batches, algo, train, temperature, generator, on_step=bar.advance, whiten=ctx.whiten,
            micro_batches=micro_batches,
        )
    if ctx.critic is not None:
        with ctx.bars.phase("value update", planned_steps(train, len(batches))) as bar:
            stats.update(ctx.critic.update(torch.Generator().manual_seed(ctx.seed), on_step=bar.advance))
    return {**stats, **gap, **dropped_metrics(episodes, kept)}


def nonzero_advantage_part(episodes: list[Episode]) -> list[Episode]:
    """What `algo.drop_zero_advantage` trains on: each episode cut after its last token with a nonzero advantage,
    and the episodes with none left out."""
    kept = []
    for episode in episodes:
        nonzero = [i for i, advantage in enumerate(episode.advantages) if advantage != 0]
        if nonzero:
            length = nonzero[-1] + 1
            kept.append(replace(
                episode, response_ids=episode.response_ids[:length], sample_logprobs=episode.sample_logprobs[:length],
                advantages=episode.advantages[:length],
            ))
    return kept


def dropped_metrics(episodes: list[Episode], trained: list[Episode]) -> dict[str, float]:
    """The shares of the episodes and of their response tokens that the update left out (`nonzero_advantage_part`;
    0 without `algo.drop_zero_advantage`)."""
    tokens = sum(len(e.response_ids) for e in episodes)
    return {
        "update/dropped_episodes": 1 - len(trained) / max(1, len(episodes)),
        "update/dropped_tokens": 1 - sum(len(e.response_ids) for e in trained) / max(1, tokens),
    }


def planned_steps(train: TrainConfig, micro_batches: int, per_step: int | None = None) -> int:
    """Optimizer steps of an update over this many micro-batches, `per_step` of them a step (default: `train`'s;
    `minibatch_steps`), for its progress bar."""
    return train.epochs * math.ceil(micro_batches / (per_step or micro_batches_per_step(train)))


def micro_batches_with_rollouts(episodes: list[Episode], train: TrainConfig) -> int:
    """Micro-batches of this rank per optimizer step when the episodes include trained rollouts: `train`'s, times
    all episodes over the samples (summed over the ranks, a collective), so that the steps stay those of the
    samples alone."""
    counts = torch.tensor([len(episodes), sum(not e.rollout for e in episodes)], dtype=torch.float64)
    rows, samples = distributed.sum_over_ranks(counts).tolist()
    return math.ceil(micro_batches_per_step(train) * rows / max(samples, 1.0))


def policy_stats(stats: dict[str, float]) -> dict[str, float]:
    """`minibatch_steps`' statistics under the policy's metric names."""
    stats = dict(stats)
    if "grad_norm" in stats:  # absent when the iteration had nothing to train on (RestEM, DPO+)
        stats["loss/grad_norm"] = stats.pop("grad_norm")
    stats["train/lr"] = stats.pop("lr")
    stats["tokens/update"] = stats.pop("tokens")
    stats["tokens/update_padded"] = stats.pop("padded_tokens")
    return stats
