"""Policy loss, value loss, KL estimators, advantage whitening and token aggregation: pure tensor functions.

All per-token tensors are [B, T] with a float `mask` that is 1 on response tokens. The policy losses take
per-token `weights` (see `token_weights`) instead of a mask: the weights of a mini-batch's tokens, across its
micro-batches and processes, sum to 1, so summing the micro-batch losses gives exactly the mini-batch's aggregate
and gradient accumulation does not change the gradient. The value loss divides a token sum by the mini-batch's
`num_tokens` (its token-mean).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch

LossAggregation = Literal["token_mean", "sequence_mean"]  # token_weights
KLAggregation = Literal["token_mean", "sequence_mean", "sequence_sum"]  # token_weights
KLGradient = Literal["ratio_corrected", "plain"]  # kl_loss_terms
KLEstimator = Literal["k1", "k2", "k3"]
Reduce = Callable[[torch.Tensor], torch.Tensor]


def _same(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


@dataclass(frozen=True)
class MiniBatchTotals:
    """Counts over a whole mini-batch (all its micro-batches), which each micro-batch's loss is divided by."""

    tokens: float  # response tokens
    sequences: float  # responses


def token_weights(
    mask: torch.Tensor, aggregation: LossAggregation | KLAggregation, totals: MiniBatchTotals
) -> torch.Tensor:
    """Per-token weights that turn a token sum into the mini-batch's aggregate loss.

    "token_mean": every response token of the mini-batch weighs 1 / tokens (the paper's and the official code's
    aggregation of the policy loss: a long response moves the loss more than a short one). "sequence_mean": each
    response's token-mean, averaged over the mini-batch's responses (weight 1 / (its length x responses); GRPO's
    original aggregation, which gives every response the same say whatever its length). "sequence_sum": each
    response's token sum, averaged over the responses (weight 1 / responses; the official code's KL term).
    """
    if aggregation == "token_mean":
        return mask / totals.tokens
    if aggregation == "sequence_mean":
        lengths = mask.sum(-1, keepdim=True).clamp(min=1.0)
        return mask / (lengths * totals.sequences)
    if aggregation == "sequence_sum":
        return mask / totals.sequences
    raise ValueError(
        f"unknown aggregation {aggregation!r}; expected token_mean, sequence_mean or sequence_sum"
    )


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: KLEstimator) -> torch.Tensor:
    """Per-token estimates of KL(pi || pi_ref) from tokens sampled by pi (Schulman's k1, k2, k3).

    k1 = log r, k2 = (log r)^2 / 2, k3 = exp(-log r) - 1 + log r, with log r = logp - ref_logp.
    k1 and k3 are unbiased for the KL value; k3 is also non-negative and has low variance.
    """
    log_ratio = logp - ref_logp
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio**2
    if estimator == "k3":
        return torch.exp(-log_ratio) - 1.0 + log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}; expected k1, k2 or k3")


@dataclass(frozen=True)
class KLPenalty:
    """The KL-to-reference term of the loss: coef x aggregate over tokens of `kl_loss_terms` (algo.kl_* keys)."""

    coef: float
    estimator: KLEstimator = "k3"
    gradient: KLGradient = "ratio_corrected"
    clip: float | None = None  # per-token estimates clipped to [0, clip] in the loss (official: 10)


def kl_loss_terms(
    logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor, penalty: KLPenalty
) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-token KL penalty to put in the loss, per-token KL estimate to log).

    The tokens were sampled by pi_old. "ratio_corrected": for k1 and k3 the value estimates KL(pi || pi_ref), but
    the gradient of the value alone does not estimate that KL's gradient (for k1 its expectation is 0):
    multiplying by the importance ratio pi / pi_old (with gradient) adds the missing score-function term and
    reweights correctly once pi has moved from pi_old in later epochs, so the penalty's gradient is an unbiased
    estimate of grad KL(pi || pi_ref). k2's own gradient, E[log r grad log pi], already equals it on-policy, so k2
    is used as it is. "plain": the estimate itself, as the official code does; for k3 its expected gradient is
    that of KL(pi_ref || pi), the reverse direction (for k1, zero). `clip` bounds the penalty's estimate to
    [0, clip] first (the official code's clamp, whose gradient is 0 outside it); the logged estimate is unclipped.
    """
    kl = kl_estimate(logp, ref_logp, penalty.estimator)
    bounded = kl if penalty.clip is None else kl.clamp(0.0, penalty.clip)
    if penalty.gradient == "plain" or penalty.estimator == "k2":
        return bounded, kl
    if penalty.gradient != "ratio_corrected":
        raise ValueError(f"unknown KL gradient {penalty.gradient!r}; expected ratio_corrected or plain")
    return torch.exp(logp - old_logp) * bounded, kl


@dataclass
class PolicyLossOutput:
    loss: torch.Tensor  # scalar to backpropagate: the aggregate policy loss + coef x the aggregate KL penalty
    pg_loss: torch.Tensor  # the policy loss's aggregate, detached, for logging
    kl: torch.Tensor  # the KL estimate's aggregate (with the KL weights; not the ratio-weighted term)
    clip_fraction: torch.Tensor
    approx_kl: torch.Tensor  # k3 estimate of KL(pi_old || pi): how far this update has moved the policy
    mean_ratio: torch.Tensor  # pi / pi_old averaged over the tokens (the ratio_threshold guard's measure)


def masked_sum(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum()


def ppo_policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor,
    advantages: torch.Tensor,
    weights: torch.Tensor,
    clip_range: float,
    kl: KLPenalty,
    kl_weights: torch.Tensor | None = None,
) -> PolicyLossOutput:
    """PPO clipped surrogate max(-A rho, -A clip(rho, 1-eps, 1+eps)) summed over tokens with `weights`
    (`token_weights`), plus kl.coef x the KL penalty summed with `kl_weights` (default: `weights`)."""
    kl_weights = weights if kl_weights is None else kl_weights
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    pg = torch.maximum(unclipped, clipped)
    kl_term, kl_value = kl_loss_terms(logp, old_logp, ref_logp, kl)
    loss = masked_sum(pg, weights) + kl.coef * masked_sum(kl_term, kl_weights)
    with torch.no_grad():
        mask = (weights != 0).float()
        return PolicyLossOutput(
            loss=loss,
            pg_loss=masked_sum(pg, weights),
            kl=masked_sum(kl_value, kl_weights),
            clip_fraction=masked_sum((clipped > unclipped).float(), weights),
            approx_kl=masked_sum(ratio - 1.0 - log_ratio, weights),
            mean_ratio=masked_sum(ratio, mask) / mask.sum().clamp(min=1.0),
        )


def nll_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor, weights: torch.Tensor, kl: KLPenalty,
    kl_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Supervised fine-tuning on the given tokens, -log pi summed with `weights`, plus kl.coef x the KL penalty of
    `kl_loss_terms` summed with `kl_weights` (default: `weights`) (RestEM's loss). Returns (loss, the detached
    KL estimate's aggregate)."""
    kl_weights = weights if kl_weights is None else kl_weights
    kl_term, kl_value = kl_loss_terms(logp, old_logp, ref_logp, kl)
    loss = masked_sum(-logp, weights) + kl.coef * masked_sum(kl_term, kl_weights)
    with torch.no_grad():
        return loss, masked_sum(kl_value, kl_weights)


@dataclass
class PreferenceLossOutput:
    losses: torch.Tensor  # [P] per pair
    margins: torch.Tensor  # [P] beta * (chosen log-ratio - rejected log-ratio), the DPO reward margin
    chosen_drop: torch.Tensor  # [P] max(0, log pi_ref(y_w) - log pi(y_w)), the DPO+ penalty's argument


def dpo_plus_loss(
    chosen_logp: torch.Tensor,
    rejected_logp: torch.Tensor,
    chosen_ref_logp: torch.Tensor,
    rejected_ref_logp: torch.Tensor,
    beta: float,
    lam: float,
) -> PreferenceLossOutput:
    """DPO-Positive (Pal et al. 2024), the paper's DPO+, on sequence log-probs [P]:

        -log sigmoid(beta * [(log pi - log pi_ref)(y_w) - (log pi - log pi_ref)(y_l)
                             - lam * max(0, log pi_ref(y_w) - log pi(y_w))])

    (PAPER-NOTES 2.11). The added term penalises lowering the chosen (correct) response's likelihood below the
    reference's, which plain DPO allows as long as the rejected one falls faster. lam = 0 is plain DPO.
    """
    chosen_ratio = chosen_logp - chosen_ref_logp
    rejected_ratio = rejected_logp - rejected_ref_logp
    chosen_drop = torch.clamp(chosen_ref_logp - chosen_logp, min=0.0)
    logits = beta * (chosen_ratio - rejected_ratio - lam * chosen_drop)
    with torch.no_grad():
        margins = beta * (chosen_ratio - rejected_ratio)
    return PreferenceLossOutput(-torch.nn.functional.logsigmoid(logits), margins, chosen_drop.detach())


def masked_mean_var(
    values: torch.Tensor, mask: torch.Tensor, unbiased: bool = False, reduce: Reduce | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of the masked entries (divided by count - 1 when `unbiased`). `reduce` sums a tensor
    over the processes of a data-parallel run (vineppo.parallel.distributed.sum_over_ranks), giving the global moments."""
    reduce = reduce or _same
    count, total = reduce(torch.stack([mask.sum(), masked_sum(values, mask)]))
    mean = total / count
    return mean, reduce(masked_sum((values - mean) ** 2, mask)) / (count - 1 if unbiased else count)


def whiten(values: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8, reduce: Reduce | None = None) -> torch.Tensor:
    """(x - mean) / std over the masked entries (unbiased variance, as the official code's masked_whiten), over
    all processes when `reduce` is given.

    When every masked value is equal (e.g. every reward of the batch equal, so every VinePPO advantage is 0)
    the result is 0 rather than a division by zero.
    """
    if (reduce or _same)(mask.sum()) < 2:
        return torch.zeros_like(values)
    mean, var = masked_mean_var(values, mask, unbiased=True, reduce=reduce)
    if var <= eps:
        return torch.zeros_like(values)
    return (values - mean) * torch.rsqrt(var + eps) * mask


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits / T) gathered at `tokens`; logits [B, T, V], tokens [B, T]."""
    logprobs = torch.log_softmax(logits.float() / temperature, dim=-1)
    return logprobs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def entropy_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    logprobs = torch.log_softmax(logits.float() / temperature, dim=-1)
    return -(logprobs.exp() * logprobs).sum(-1)


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    num_tokens: int | float,
    clip_range: float,
) -> torch.Tensor:
    """0.5 max((V - R)^2, (clip(V, V_old - eps, V_old + eps) - R)^2), token-summed and divided by `num_tokens`.

    The PPO baseline's value loss (PAPER-NOTES 2.5): like the policy ratio, the value may not move more than
    `clip_range` away from the value that computed the returns without the loss noticing.
    """
    if num_tokens <= 0:
        raise ValueError(f"num_tokens must be positive, got {num_tokens}")
    clipped = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    loss = 0.5 * torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)
    return masked_sum(loss, mask) / num_tokens
