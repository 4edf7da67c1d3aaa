"""The report's answer figures (src/studies/report.py), drawn with matplotlib (Agg):

- tradeoff.png: diversity against quality, one point per setting (e.g. a method): quality's mean
  over seeds with its sample std as a horizontal bar (the seed spread), diversity on the y axis
  (mode entropy in bits: a set statistic of the seeds, no spread; a per-run diversity gets its
  std as a vertical bar). With a known truth (src/studies/context.py: ClassWorld) its entropy is
  a dashed line, and the most ``n`` seeds can show (log2 min(n, k) for k true modes) a dotted one.
- modes.png: per setting, the fraction of seeds that reached each class (named: "yellow cone"),
  beside the truth's p(class | prompt) as hatched outlines; "none" for seeds that reached no class.

A setting keeps its colour (``setting_color``) in every figure of the report.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

from src.metrics.modes import NO_MODE
from src.studies.context import ClassWorld
from src.studies.figures import plt_agg

PANEL_INCHES = (3.4, 2.6)
TRADEOFF_INCHES = (6.0, 4.2)
MODES_PER_ROW = 4  # panels of modes.png per row
TRUTH_COLOR = "black"
DPI = 110


def setting_color(index: int) -> str:
    """The colour of the index-th setting in every figure (matplotlib's cycle)."""
    return f"C{index % 10}"


def setting_label(setting: dict[str, str]) -> str:
    return ", ".join(str(v) for v in setting.values()) or "all"


def write_tradeoff_png(path: Path, points: list[dict], xlabel: str, ylabel: str,
                       truth: ClassWorld | None = None, n_seeds: int | None = None,
                       x_range: tuple[float, float] | None = None) -> Path | None:
    """``points``: per setting {label, color, x, x_std, y, y_std} (stds may be None); ``x_range``:
    the quality's whole range where it has one (precision: 0 to 1)."""
    points = [p for p in points if p["x"] is not None and p["y"] is not None]
    if not points:
        return None
    plt = plt_agg()
    fig, ax = plt.subplots(figsize=TRADEOFF_INCHES)
    placed: Counter = Counter()
    for p in points:
        ax.errorbar([p["x"]], [p["y"]], xerr=[p["x_std"] or 0.0], yerr=[p.get("y_std") or 0.0], fmt="o", ms=8,
                    capsize=4, color=p["color"], label=p["label"])
        at = (round(p["x"], 3), round(p["y"], 3))  # labels of points at one place stack upwards
        ax.annotate(p["label"], (p["x"], p["y"]), textcoords="offset points", xytext=(6, 6 + 11 * placed[at]),
                    fontsize=8, color=p["color"])
        placed[at] += 1
    if truth is not None and truth.truth:
        ax.axhline(truth.truth_entropy, ls="--", color=TRUTH_COLOR, lw=1,
                   label=f"truth: {truth.truth_entropy:.3g} bits ({len(truth.truth)} modes)")
        if n_seeds:
            reachable = math.log2(min(n_seeds, len(truth.truth)))
            if reachable < truth.truth_entropy - 1e-9:
                ax.axhline(reachable, ls=":", color=TRUTH_COLOR, lw=1,
                           label=f"most {n_seeds} seeds can show: {reachable:.3g} bits")
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.set_title("diversity against quality (one point per setting; bars: std over seeds)", fontsize=9)
    ax.tick_params(labelsize=8)
    ax.margins(0.15)
    if x_range is not None:
        pad = 0.05 * (x_range[1] - x_range[0])
        ax.set_xlim(x_range[0] - pad, x_range[1] + pad)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return Path(path)


def mode_fractions(mode_ids: list[float | None]) -> dict[int, float]:
    """class id (NO_MODE for none) -> fraction of the runs; runs without a value left out."""
    ids = [int(m) for m in mode_ids if m is not None and not (isinstance(m, float) and math.isnan(m))]
    return {k: c / len(ids) for k, c in Counter(ids).items()} if ids else {}


def write_modes_png(path: Path, panels: list[dict], world: ClassWorld | None) -> Path | None:
    """``panels``: per setting {label, color, mode_ids (per finished seed)}."""
    panels = [p for p in panels if p["mode_ids"]]
    if not panels:
        return None
    fractions = [mode_fractions(p["mode_ids"]) for p in panels]
    truth = world.truth if world is not None else {}
    reached = {k for f in fractions for k in f if k != NO_MODE}
    classes = sorted(set(truth) | reached) + ([NO_MODE] if any(NO_MODE in f for f in fractions) else [])
    names = [world.name(k) if world is not None else str(k) for k in classes]
    plt = plt_agg()
    ncols = min(MODES_PER_ROW, len(panels))
    nrows = -(-len(panels) // ncols)
    width = max(PANEL_INCHES[0], 0.45 * len(classes) + 1.0)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, PANEL_INCHES[1] * nrows), squeeze=False,
                             sharey=True)
    xs = range(len(classes))
    for ax, p, f in zip(axes.flat, panels, fractions):
        ax.bar(xs, [f.get(k, 0.0) for k in classes], width=0.7, color=p["color"], label=f"{len(p['mode_ids'])} seeds")
        if truth:
            ax.bar(xs, [truth.get(k, 0.0) for k in classes], width=0.7, fill=False, hatch="//",
                   edgecolor=TRUTH_COLOR, lw=1, label="truth")
        ax.set_title(p["label"], fontsize=9)
        ax.set_xticks(list(xs), names, rotation=45, ha="right", fontsize=7)
        ax.set_ylim(0, 1.05)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
    for ax in axes[:, 0]:
        ax.set_ylabel("fraction of seeds", fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle("the mode each seed reached, beside the truth's p(class | prompt)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return Path(path)
