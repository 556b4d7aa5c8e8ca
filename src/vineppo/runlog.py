"""A run's logs: metrics.jsonl (one JSON object per iteration), TensorBoard scalars, samples.jsonl (a few episodes
of each iteration with their credit, vineppo.report.samples), a PNG of the curves, and Weights & Biases when
asked for (`logging.wandb`; the run id is kept in RUN_DIR/wandb_id so a resumed run logs to the same W&B run)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

CONFIG_FILE = "config.yaml"  # the run's resolved config, which --resume reads
METRICS_FILE = "metrics.jsonl"
SAMPLES_FILE = "samples.jsonl"
PLOT_FILE = "curves.png"


@dataclass(frozen=True)
class Curves:
    """What run_dir/curves.png shows: (metric key, legend label, matplotlib style) per line, against the records'
    `iteration`."""

    lines: tuple[tuple[str, str, str], ...]
    xlabel: str
    ylabel: str
    ylim: tuple[float, float] | None


RL_CURVES = Curves(
    (("eval/accuracy", "test accuracy (greedy)", "o-"), ("train/reward", "train reward (sampled)", "-")),
    "iteration", "fraction", (0, 1),
)


def read_metrics(run_dir: Path) -> list[dict]:
    return read_jsonl(Path(run_dir) / METRICS_FILE)


def read_samples(run_dir: Path) -> list[dict]:
    return read_jsonl(Path(run_dir) / SAMPLES_FILE)


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSONL log; a last line cut short by a killed run is ignored, a bad line elsewhere is an
    error naming the file and line."""
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):  # a run killed while writing its last line: everything before is intact
                break
            raise ValueError(f"{path}:{number}: not a JSON object") from None
    return records


def _rewrite(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


class WandbMissingError(ImportError):
    """`logging.wandb` is on but the wandb package is not installed."""


def start_wandb(run_dir: Path, project: str, config: dict):
    """A W&B run for `run_dir`: a new one, or the one a resumed run started (its id is in RUN_DIR/wandb_id).
    A resumed run logs its repeated iterations again; W&B keeps the first value of a step."""
    try:
        import wandb
    except ImportError:
        raise WandbMissingError("logging.wandb is true but wandb is not installed: pip install wandb") from None
    id_file = run_dir / "wandb_id"
    run_id = id_file.read_text().strip() if id_file.is_file() else wandb.util.generate_id()
    id_file.write_text(run_id + "\n")
    return wandb.init(project=project, id=run_id, resume="allow", name=run_dir.name, dir=str(run_dir), config=config)


class RunLog:
    """Appends metric and sample records. Records after iteration `keep_through` (the checkpoint being resumed;
    -1 for a fresh run) are dropped first, so a resumed run rewrites exactly the iterations it repeats."""

    def __init__(
        self, run_dir: Path, tensorboard: bool, keep_through: int = -1, wandb_project: str | None = None,
        config: dict | None = None, curves: Curves = RL_CURVES,
    ):
        self.run_dir = Path(run_dir)
        self.curves = curves
        self.path = self.run_dir / METRICS_FILE
        self.records = [r for r in read_metrics(self.run_dir) if r["iteration"] <= keep_through]
        _rewrite(self.path, self.records)
        self.samples_path = self.run_dir / SAMPLES_FILE
        _rewrite(self.samples_path, [r for r in read_samples(self.run_dir) if r["iteration"] <= keep_through])
        # W&B first: a missing wandb package then fails before a TensorBoard writer (and its thread) is open
        self._wandb = start_wandb(self.run_dir, wandb_project, config or {}) if wandb_project else None
        self._writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"), purge_step=keep_through + 1)

    def last(self, key: str) -> float:
        """The latest logged value of `key` (nan if none)."""
        return next((r[key] for r in reversed(self.records) if key in r), float("nan"))

    def log(self, iteration: int, metrics: dict[str, float]) -> None:
        record = {"iteration": iteration, **metrics}
        self.records.append(record)
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self._writer is not None:
            for name, value in metrics.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self._writer.add_scalar(name, value, iteration)
            self._writer.flush()
        if self._wandb is not None:
            self._wandb.log(metrics, step=iteration)

    def log_samples(self, iteration: int, samples: list[dict]) -> None:
        with self.samples_path.open("a") as f:
            for sample in samples:
                f.write(json.dumps({"iteration": iteration, **sample}) + "\n")

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._wandb is not None:
            self._wandb.finish()
        plot_curves(self.run_dir, self.curves)


def plot_curves(run_dir: Path, curves: Curves = RL_CURVES) -> Path | None:
    """The logged `curves` (by default test accuracy and train reward) against iteration, as run_dir/curves.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(run_dir)
    if not records:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label, style in curves.lines:
        points = [(r["iteration"], r[key]) for r in records if key in r]
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, style, label=label)
    ax.set_xlabel(curves.xlabel)
    ax.set_ylabel(curves.ylabel)
    if curves.ylim:
        ax.set_ylim(*curves.ylim)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(run_dir) / PLOT_FILE
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
