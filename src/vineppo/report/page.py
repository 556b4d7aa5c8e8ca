"""`vineppo report RUN_DIR`: one self-contained HTML file (no server, no network) with the run's curves and, for a
few iterations, sampled responses coloured step by step by their advantage, the value at each step boundary on
hover; the curves also as report_curves.png.

Every piece of model or data text is HTML-escaped: a response is shown, never interpreted.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from vineppo.algorithms import METHODS
from vineppo.runlog import CONFIG_FILE, read_metrics, read_samples
from vineppo.tasks.base import CORRECT

REPORT_FILE = "report.html"
CURVES_FILE = "report_curves.png"

PANELS = [  # (title, [(metric, label)])
    ("accuracy", [("eval/accuracy", "test (greedy)"), ("train/accuracy", "train (sampled)")]),
    ("KL to the reference", [("loss/kl", "KL estimate")]),
    ("policy entropy", [("policy/entropy", "entropy per token")]),
    ("advantages", [("advantage/std", "std"), ("advantage/max", "max"), ("advantage/min", "min")]),
    ("tokens per iteration", [("tokens/policy", "policy samples"), ("tokens/mc", "MC rollouts")]),
    ("seconds per iteration", [("time/sample", "sampling"), ("time/credit", "credit"), ("time/update", "update")]),
]


def curves_png(records: list[dict]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5))
    for ax, (title, series) in zip(axes.flat, PANELS):
        for key, label in series:
            points = [(r["iteration"], r[key]) for r in records if key in r]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, "o-" if key.startswith("eval/") else "-", markersize=3, label=label)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("iteration", fontsize=8)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return buffer.getvalue()


def pick_iterations(available: list[int], count: int) -> list[int]:
    """`count` iterations spread from the first to the last that have samples."""
    if len(available) <= count:
        return available
    if count == 1:
        return available[-1:]
    return sorted({available[round(i * (len(available) - 1) / (count - 1))] for i in range(count)})


def advantage_colour(advantage: float | None, scale: float) -> str:
    """Green for a positive advantage, red for a negative one, stronger the larger it is (|A| / scale)."""
    if advantage is None or scale <= 0:
        return "transparent"
    strength = min(1.0, abs(advantage) / scale) * 0.65
    return f"rgba(0, 150, 60, {strength:.3f})" if advantage > 0 else f"rgba(215, 40, 40, {strength:.3f})"


def step_title(index: int, step: dict, value_source: str) -> str:
    parts = [f"step {index + 1}"]
    if step["value"] is not None:
        parts.append(f"V(start) = {step['value']:.3f} ({value_source})")
    if step["advantage"] is not None:
        parts.append(f"advantage {step['advantage']:+.3f}")
    return " · ".join(parts)


def sample_html(sample: dict, scale: float, value_source: str) -> str:
    mark = "correct" if sample["reward"] >= CORRECT else "wrong"
    steps = "".join(
        f'<span class="step" style="background:{advantage_colour(step["advantage"], scale)}" '
        f'title="{html.escape(step_title(i, step, value_source))}">{html.escape(step["text"])}</span>'
        for i, step in enumerate(sample["steps"])
    )
    cut = " (cut off at the length limit)" if sample["finish_reason"] == "length" else ""
    return (
        f'<div class="sample {mark}"><div class="meta">reward {sample["reward"]:g} · gold answer '
        f'{html.escape(str(sample["answer"]))}{cut}</div><pre class="prompt">{html.escape(sample["prompt"])}</pre>'
        f'<pre class="response">{steps}</pre></div>'
    )


STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; max-width: 1250px; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 28px; }
.facts td { padding: 2px 14px 2px 0; }
.samples { display: grid; grid-template-columns: repeat(auto-fill, minmax(280px, 1fr)); gap: 12px; }
.sample { border: 1px solid #ccc; border-radius: 6px; padding: 8px; }
.sample.correct { border-left: 5px solid #2a9d55; } .sample.wrong { border-left: 5px solid #d62828; }
.meta { font-size: 12px; color: #555; margin-bottom: 4px; }
pre { margin: 0; font-size: 14px; white-space: pre-wrap; word-break: break-word; }
pre.prompt { color: #777; }
.step { border-radius: 3px; cursor: help; } .step:hover { outline: 1px solid #333; }
.legend span { padding: 2px 8px; margin-right: 6px; border-radius: 3px; font-size: 12px; }
"""


NO_SAMPLES = "<p>This run logged no samples (logging.samples_per_iteration = 0).</p>"


def render(
    run_dir: Path, records: list[dict], curves: bytes, iterations: list[int] | None = None, count: int = 3
) -> str:
    """The report page of `run_dir` as HTML text, from its metric records and their curves (a PNG)."""
    import yaml

    config_path = Path(run_dir) / CONFIG_FILE
    config_text = config_path.read_text() if config_path.is_file() else ""
    config = yaml.safe_load(config_text) if config_text else {}
    algo = config.get("algo", {}).get("name", "?")
    method = METHODS.get(algo)
    value_source = (method.values if method else None) or "none"
    options = config.get("algo", {}).get(algo) or {}  # the method's own section

    samples = read_samples(run_dir)
    available = sorted({s["iteration"] for s in samples})
    chosen = [i for i in iterations if i in available] if iterations else pick_iterations(available, count)
    shown = [s for s in samples if s["iteration"] in chosen]
    advantages = [abs(step["advantage"]) for s in shown for step in s["steps"] if step["advantage"] is not None]
    scale = max(advantages, default=0.0)

    evals = [(r["iteration"], r["eval/accuracy"]) for r in records if "eval/accuracy" in r]
    facts = [
        ("method", algo + "".join(f" · {key} {value}" for key, value in options.items())), ("model", config.get("model", {}).get("path", "?")),
        ("task", config.get("task", {}).get("name", "?")), ("iterations logged", records[-1]["iteration"]),
        ("greedy test accuracy", " → ".join(f"{a:.1%} (it. {i})" for i, a in (evals[:1] + evals[-1:]))),
    ]
    sections = []
    for iteration in chosen:
        cards = "".join(sample_html(s, scale, value_source) for s in shown if s["iteration"] == iteration)
        sections.append(f"<h3>iteration {iteration}</h3><div class='samples'>{cards}</div>")
    legend = (
        f"<p class='legend'>Each response is coloured step by step by its advantage (strongest at |A| = "
        f"{scale:.2f}): <span style='background:{advantage_colour(scale, scale)}'>positive</span>"
        f"<span style='background:{advantage_colour(-scale, scale)}'>negative</span> Hover a step for the value "
        f"at its start ({html.escape(value_source)}) and its advantage.</p>"
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>vineppo run {html.escape(str(run_dir))}</title>
<style>{STYLE}</style></head><body>
<h1>vineppo run <code>{html.escape(str(run_dir))}</code></h1>
<table class="facts">{"".join(f"<tr><td>{k}</td><td>{html.escape(str(v))}</td></tr>" for k, v in facts)}</table>
<h2>Training curves</h2><img alt="training curves" src="data:image/png;base64,{base64.b64encode(curves).decode()}" style="max-width:100%">
<h2>Sampled responses and their credit</h2>
{legend if shown else NO_SAMPLES}
{"".join(sections)}
<h2>Config</h2><details><summary>config.yaml</summary><pre>{html.escape(config_text)}</pre></details>
</body></html>
"""


def write_report(run_dir: Path, output: Path | None = None, iterations: list[int] | None = None) -> Path:
    """Write the page (default RUN_DIR/report.html) and report_curves.png beside it; return the page's path."""
    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    if not records:
        raise FileNotFoundError(f"{run_dir} has no metrics.jsonl records: is it a vineppo run directory?")
    output = output or run_dir / REPORT_FILE
    curves = curves_png(records)
    page = render(run_dir, records, curves, iterations)
    output.parent.mkdir(parents=True, exist_ok=True)
    (output.parent / CURVES_FILE).write_bytes(curves)
    output.write_text(page)
    return output
