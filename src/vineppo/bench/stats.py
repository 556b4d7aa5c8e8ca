"""The figures of a seeded comparison: what each run's evaluation points say, and their mean over seeds with a 95%
confidence interval (Student's t over the seeds: the runs of one method are independent draws of its outcome).

A run's points are `{"seconds", "tokens", "accuracy", "iteration"}` dicts in time order, the first at 0 s. Its
accuracy at time t is the accuracy of its last evaluation at or before t: the model one would have at t, as last
measured (a step function). Its area under the accuracy-vs-seconds curve is that step function's mean over
[0, budget], an accuracy (1 = right from the start). Both read another axis than seconds (`key`: iterations, tokens,
a cost) alike.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Iterator, Sequence

from scipy.stats import t as student_t

LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """The mean of `n` values and the half-width of its confidence interval (nan with fewer than 2 values)."""

    mean: float
    half_width: float
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width

    def as_dict(self) -> dict:
        return {"mean": self.mean, "low": self.low, "high": self.high, "n": self.n}


def mean_interval(values: Sequence[float], level: float = LEVEL) -> Interval:
    """Mean and two-sided `level` t-interval: mean +- t_{(1+level)/2, n-1} * s / sqrt(n)."""
    n = len(values)
    if n == 0:
        return Interval(math.nan, math.nan, 0)
    mean = statistics.fmean(values)
    if n == 1:
        return Interval(mean, math.nan, 1)
    quantile = float(student_t.ppf((1 + level) / 2, n - 1))
    return Interval(mean, quantile * statistics.stdev(values) / math.sqrt(n), n)


def accuracy_at(points: Sequence[dict], at: float, key: str = "seconds") -> float:
    """The accuracy of the last evaluation at or before `at` (of `key`)."""
    return [p for p in points if p[key] <= at][-1]["accuracy"]


def held_stretches(points: Sequence[dict], end: float, key: str = "seconds") -> Iterator[tuple[dict, float]]:
    """Each evaluation with the length of [0, end] (of `key`) over which its accuracy holds: until the next
    evaluation, the last one until `end`; evaluations past `end` hold for 0."""
    bounds = [min(p[key], end) for p in points] + [end]
    return ((point, stop - start) for point, start, stop in zip(points, bounds, bounds[1:]))


def area_under_curve(points: Sequence[dict], budget: float, key: str = "seconds") -> float:
    """The mean over [0, budget] (of `key`) of `accuracy_at`: each evaluation's accuracy holds until the next one."""
    return sum(point["accuracy"] * length for point, length in held_stretches(points, budget, key)) / budget


def training_accuracy_mean(points: Sequence[dict], end: float, start: float = 0.0, key: str = "seconds") -> float:
    """The mean over [start, end] (of `key`) of the accuracy of the samples trained on: each point after the first
    holds the mean over the iterations since the evaluation before it (`train_accuracy`), so it holds over the
    stretch that ends at it, where `area_under_curve`'s accuracy holds over the stretch that starts at it. These are
    the policy's own samples at the sampling temperature, on training prompts drawn afresh each iteration: a sampled
    measure of the policy beside the greedy test accuracy."""
    def area_to(upto: float) -> float:  # each stretch of `held_stretches` carries the next point's figure
        return sum(after["train_accuracy"] * length
                   for (_, length), after in zip(held_stretches(points, upto, key), points[1:]))

    return (area_to(end) - area_to(start)) / (end - start)


def widest_step(points: Sequence[dict], end: float, key: str = "seconds") -> float:
    """The longest stretch of [0, end] (of `key`) over which one evaluation's accuracy holds in `area_under_curve`:
    how finely that area resolves the curve."""
    return max(length for _, length in held_stretches(points, end, key))


def first_reaching(points: Sequence[dict], threshold: float, key: str) -> float | None:
    """`key` (seconds, tokens) at the first evaluation with accuracy >= `threshold`; None if none reaches it."""
    return next((p[key] for p in points if p["accuracy"] >= threshold), None)


def paired_differences(runs: dict[int, float], baseline: dict[int, float]) -> Interval:
    """The mean over the seeds both have of (run - baseline), seed by seed, with its interval."""
    return mean_interval([runs[seed] - baseline[seed] for seed in sorted(runs.keys() & baseline.keys())])
