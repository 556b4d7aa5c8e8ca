"""The figures of the value analysis, as pure functions of plain numbers."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence


@dataclass(frozen=True)
class Estimate:
    """A mean over independent items with its standard error (None where undefined: no items, or one)."""

    mean: float | None
    stderr: float | None
    count: int

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        if self.mean is None:
            return "n/a"
        return f"{self.mean:.3f}" + (f" ± {self.stderr:.3f}" if self.stderr is not None else "")


def mean_with_stderr(values: Sequence[float]) -> Estimate:
    """The mean and its standard error, sample std (n - 1) / sqrt(n)."""
    n = len(values)
    if n == 0:
        return Estimate(None, None, 0)
    mean = sum(values) / n
    if n == 1:
        return Estimate(mean, None, 1)
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    return Estimate(mean, math.sqrt(variance / n), n)


def absolute_errors(predicted: Sequence[float], truth: Sequence[float]) -> list[float]:
    return [abs(p - t) for p, t in zip(predicted, truth, strict=True)]


def mean_absolute_error(predicted: Sequence[float], truth: Sequence[float]) -> Estimate:
    return mean_with_stderr(absolute_errors(predicted, truth))


def ranking_scores(
    truth: Sequence[tuple[float, float]], predicted: Sequence[tuple[float, float]]
) -> list[float]:
    """One score per pair of alternative next states whose ground-truth values differ (pairs with equal ground
    truth have no better state and are dropped): 1 if the estimator ranks the better state higher, 0.5 if it
    gives both the same value, else 0. Step-ranking accuracy is their mean."""
    scores = []
    for (truth_a, truth_b), (pred_a, pred_b) in zip(truth, predicted, strict=True):
        if truth_a == truth_b:
            continue
        if pred_a == pred_b:
            scores.append(0.5)
        else:
            scores.append(float((pred_a > pred_b) == (truth_a > truth_b)))
    return scores


def ranking_accuracy(truth: Sequence[tuple[float, float]], predicted: Sequence[tuple[float, float]]) -> Estimate:
    return mean_with_stderr(ranking_scores(truth, predicted))


def mc_sampling_error(value: float, k: int) -> float:
    """E|mean of k Bernoulli(value) draws - value|: the mean absolute error an unbiased K-rollout estimate has
    from sampling noise alone at a state whose (binary-reward) value is `value`."""
    return sum(
        math.comb(k, j) * value**j * (1 - value) ** (k - j) * abs(j / k - value) for j in range(k + 1)
    )
