"""loss.png: the training curves of a run, drawn from its metrics.jsonl at the end of a run."""

from __future__ import annotations

import json
import math
from pathlib import Path

# The curves drawn (when logged): the distillation loss, the size of the estimator's gradient
# and the timestep it was taken at.
CURVES = ("loss", "grad_norm", "t")


def plot_curves(jsonl: Path, out: Path, keys=CURVES) -> Path | None:
    """One panel per key of ``keys`` found in ``jsonl`` against the step; None without data."""
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

    fig, axes = plt.subplots(1, len(series), figsize=(3.6 * len(series), 2.8), squeeze=False)
    for ax, (k, pts) in zip(axes[0], series.items()):
        steps, vals = zip(*pts)
        ax.plot(steps, vals, lw=1)
        if k == "loss" and min(vals) > 0 and max(vals) / min(vals) > 100:
            ax.set_yscale("log")
        ax.set_title(k, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return Path(out)
