"""Policy loss, value loss, KL estimators, advantage whitening and token aggregation: pure tensor functions.

All per-token tensors are [B, T] with a float `mask` that is 1 on response tokens. Losses are returned as *sums*
over tokens divided by a caller-supplied `num_tokens`, the response-token count of the whole mini-batch (across
micro-batches and processes): summing the micro-batch losses then gives exactly the token-mean of the
mini-batch, so gradient accumulation does not change the gradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

KLEstimator = Literal["k1", "k2", "k3"]


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


def kl_loss_terms(
    logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor, estimator: KLEstimator
) -> torch.Tensor:
    """Per-token KL penalty whose gradient is an unbiased estimate of grad KL(pi || pi_ref).

    The tokens were sampled by pi_old. For k1 and k3 the value estimates the KL, but the gradient of the value
    alone does not estimate the gradient of the KL (for k1 its expectation is 0): multiplying by the importance
    ratio pi / pi_old (with gradient) adds the missing score-function term, and reweights correctly once pi has
    moved away from pi_old in later epochs. k2's own gradient, E[log r * grad log pi], already equals grad KL
    on-policy, so it is used as it is.
    """
    kl = kl_estimate(logp, ref_logp, estimator)
    if estimator == "k2":
        return kl
    return torch.exp(logp - old_logp) * kl


@dataclass
class PolicyLossOutput:
    loss: torch.Tensor  # scalar to backpropagate: (sum of pg + kl_coef * kl over tokens) / num_tokens
    pg_loss: torch.Tensor  # the same sums, detached, for logging
    kl: torch.Tensor  # sum of the KL estimate (not the ratio-weighted term) / num_tokens
    clip_fraction: torch.Tensor
    approx_kl: torch.Tensor  # k3 estimate of KL(pi_old || pi): how far this update has moved the policy


def masked_sum(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum()


def ppo_policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    num_tokens: int | float,
    clip_range: float,
    kl_coef: float,
    kl_estimator: KLEstimator = "k3",
) -> PolicyLossOutput:
    """PPO clipped surrogate max(-A rho, -A clip(rho, 1-eps, 1+eps)) plus kl_coef * KL penalty, token-summed
    and divided by `num_tokens`."""
    if num_tokens <= 0:
        raise ValueError(f"num_tokens must be positive, got {num_tokens}")
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    pg = torch.maximum(unclipped, clipped)
    kl_term = kl_loss_terms(logp, old_logp, ref_logp, kl_estimator)
    loss = masked_sum(pg + kl_coef * kl_term, mask) / num_tokens
    with torch.no_grad():
        return PolicyLossOutput(
            loss=loss,
            pg_loss=masked_sum(pg, mask) / num_tokens,
            kl=masked_sum(kl_estimate(logp, ref_logp, kl_estimator), mask) / num_tokens,
            clip_fraction=masked_sum((clipped > unclipped).float(), mask) / num_tokens,
            approx_kl=masked_sum(torch.exp(log_ratio) - 1.0 - log_ratio, mask) / num_tokens,
        )


def masked_mean_var(
    values: torch.Tensor, mask: torch.Tensor, unbiased: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of the masked entries (divided by count - 1 when `unbiased`)."""
    count = mask.sum()
    mean = masked_sum(values, mask) / count
    return mean, masked_sum((values - mean) ** 2, mask) / (count - 1 if unbiased else count)


def whiten(values: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the masked entries (unbiased variance, as the official code's masked_whiten).

    When every masked value is equal (e.g. every reward of the batch equal, so every VinePPO advantage is 0)
    the result is 0 rather than a division by zero.
    """
    if mask.sum() < 2:
        return torch.zeros_like(values)
    mean, var = masked_mean_var(values, mask, unbiased=True)
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
