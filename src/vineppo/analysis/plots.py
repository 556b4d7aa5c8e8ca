"""PNGs of the value analysis: predicted against ground-truth value, and the distribution of absolute errors."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_scatter(truth: Sequence[float], predictions: Mapping[str, Sequence[float]], out: Path) -> Path:
    """One panel per estimator: its prediction against the ground truth, with the diagonal."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(predictions), figsize=(4.5 * len(predictions), 4.2), squeeze=False)
    for ax, (label, predicted) in zip(axes[0], predictions.items()):
        ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--")
        ax.scatter(truth, predicted, s=14, alpha=0.6)
        ax.set_xlabel("ground-truth value")
        ax.set_ylabel("predicted value")
        ax.set_title(label)
        ax.set_xlim(-0.05, 1.05)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_error_histogram(errors: Mapping[str, Sequence[float]], out: Path) -> Path:
    """The absolute errors of every estimator, overlaid, on shared bins of width 0.05 (errors above 1, possible
    for a value network, fall in the last bin)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    bins = [i / 20 for i in range(21)]
    for label, values in errors.items():
        ax.hist([min(v, 1.0) for v in values], bins=bins, histtype="step", lw=2, label=label)
    ax.set_xlabel("|predicted - ground-truth value|")
    ax.set_ylabel("states")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
