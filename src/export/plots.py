"""loss.png: the training curves of a run, drawn from its metrics.jsonl at the end of a run."""

from __future__ import annotations

import json
import math
from pathlib import Path

# The curves drawn (when logged): the distillation loss, the size of the estimator's gradient
# and the timestep it was taken at (its own panel: the loss of one step depends on its t).
CURVES = ("loss", "grad_norm", "t")
# Each logged value is one step's sample (one t, one view): the curves are drawn raw in a light
# colour under an exponential moving average whose half-life is this fraction of the run's
# steps, so that the smoothing looks the same whatever trainer.log_every is.
EMA_HALF_LIFE_FRACTION = 0.05
RAW_COLOUR, EMA_COLOUR = "#c6d4e8", "#1f4e9a"


def ema(steps: list[float], values: list[float], half_life: float) -> list[float]:
    """Exponential moving average over steps: a point ``d`` steps after the previous one keeps
    0.5 ** (d / half_life) of the average (unevenly logged steps are weighted by their gaps)."""
    out, avg, last = [], None, None
    for s, v in zip(steps, values):
        if avg is None:
            avg = v
        else:
            keep = 0.5 ** ((s - last) / half_life) if half_life > 0 else 0.0
            avg = keep * avg + (1.0 - keep) * v
        out.append(avg)
        last = s
    return out


def plot_curves(jsonl: Path, out: Path, keys=CURVES) -> Path | None:
    """One panel per key of ``keys`` found in ``jsonl`` against the step, raw and smoothed
    (``ema``); None without data."""
    jsonl = Path(jsonl)
    if not jsonl.exists():
        return None
    rows = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
    series = {}
    for k in keys:
        pts = [(r["step"], r[k]) for r in rows if isinstance(r.get(k), (int, float)) and "step" in r
               and math.isfinite(r[k])]
        if pts:
            series[k] = pts
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    last_step = max(s for pts in series.values() for s, _ in pts)
    half_life = EMA_HALF_LIFE_FRACTION * last_step
    fig, axes = plt.subplots(1, len(series), figsize=(3.6 * len(series), 2.8), squeeze=False)
    for ax, (k, pts) in zip(axes[0], series.items()):
        steps, vals = zip(*pts)
        ax.plot(steps, vals, lw=0.8, color=RAW_COLOUR, label="raw")
        ax.plot(steps, ema(steps, vals, half_life), lw=1.6, color=EMA_COLOUR,
                label=f"EMA (half-life {half_life:.0f} steps)")
        if k == "loss" and min(vals) > 0 and max(vals) / min(vals) > 100:
            ax.set_yscale("log")
        ax.set_title(k, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=7, frameon=False)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return Path(out)
