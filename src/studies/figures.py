"""The report's figures (src/studies/report.py): report.png and grid.png, drawn with matplotlib (Agg).

- report.png: one panel per science metric against the swept knob (the last numeric swept key,
  else the first swept key; the other keys are separate series): each seed's value as a dot,
  mean ± sample std as an error bar; ``mode_id`` as the per-seed class ids (distinct modes are
  distinct heights); group metrics (one value per setting) as markers.
- grid.png: rows = settings, columns = seeds, one view each (the first turntable frame: the
  object's front, azimuth 0), failed or unfinished runs as a labelled empty cell.
- views_<k>.png, one per setting: rows = seeds, columns = up to ``VIEWS_PER_RUN`` evenly spaced
  turntable frames (src/metrics/frames.py), each row named by its seed and the mode it reached.
- curves.png: the training curves of metrics.jsonl (src/export/plots.py's ``CURVES``) averaged
  over seeds: per setting the mean over seeds of each seed's mean in ``CURVE_BINS`` equal step
  bins (a single logged loss depends on the sampled t: noise), a band of ± the std over seeds.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np

from src.metrics.frames import run_frames
from src.metrics.modes import CATEGORICAL

GRID_CELL_INCHES = 1.6
PANEL_INCHES = (3.6, 2.6)
VIEWS_PER_RUN = 6  # at most, per seed in views_<k>.png: every 60 degrees of a 24- or 60-frame turntable
CURVE_BINS = 40  # step bins of curves.png


def plt_agg():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _is_number(v) -> bool:
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


def _axes_of(keys: list[str], groups) -> tuple[str | None, list[str]]:
    """(the x key, the series keys)."""
    if not keys:
        return None, []
    numeric = [k for k in keys if all(_is_number(s[k]) for s, _ in groups)]
    x = numeric[-1] if numeric else keys[0]
    return x, [k for k in keys if k != x]


def write_report_png(path: Path, keys: list[str], columns: list[str], rows: list[dict], groups) -> Path | None:
    if not columns or not groups:
        return None
    plt = plt_agg()
    xkey, skeys = _axes_of(keys, groups)
    xs = list(dict.fromkeys(s[xkey] for s, _ in groups)) if xkey else ["all"]
    numeric_x = xkey is not None and all(_is_number(v) for v in xs)
    pos = {v: (float(v) if numeric_x else i) for i, v in enumerate(xs)}
    series = list(dict.fromkeys(tuple(s[k] for k in skeys) for s, _ in groups))
    ncols = min(3, len(columns))
    nrows = -(-len(columns) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(PANEL_INCHES[0] * ncols, PANEL_INCHES[1] * nrows),
                             squeeze=False)
    width = (max(pos.values()) - min(pos.values()) or 1.0) * 0.02 if numeric_x else 0.08
    for ax, col in zip(axes.flat, columns):
        metric = col.removesuffix("_per_seed")
        for j, ser in enumerate(series):
            offset = (j - (len(series) - 1) / 2) * width * 2
            label = ", ".join(f"{k}={v}" for k, v in zip(skeys, ser)) or None
            px, mean, std = [], [], []
            for (setting, members), row in zip(groups, rows):
                if tuple(setting[k] for k in skeys) != ser:
                    continue
                x = pos[setting[xkey]] if xkey else 0
                if col.endswith("_per_seed") or (f"{col}_mean" in row):  # a per-run metric: each seed
                    vals = [r.metrics.get(metric) for r in members if r.finished]
                    vals = [v for v in vals if v is not None]
                    ax.plot([x + offset] * len(vals), vals, "o", ms=4, alpha=0.5, color=f"C{j}")
                    if metric not in CATEGORICAL and vals:
                        px.append(x + offset)
                        mean.append(np.mean(vals))
                        std.append(np.std(vals, ddof=1) if len(vals) > 1 else 0.0)
                elif row.get(col) is not None:
                    px.append(x + offset)
                    mean.append(row[col])
                    std.append(row.get("kid_std") or 0.0 if col == "kid" else 0.0)
            if px:
                ax.errorbar(px, mean, yerr=std, fmt="s-" if numeric_x else "s", ms=5, capsize=3,
                            color=f"C{j}", label=label)
        ax.set_title(col if not col.endswith("_per_seed") else f"{metric} (per seed)", fontsize=9)
        ax.set_xlabel(xkey or "", fontsize=8)
        if not numeric_x:
            ax.set_xticks(range(len(xs)), [str(v) for v in xs], fontsize=8, rotation=20)
            ax.set_xlim(-0.5, len(xs) - 0.5)
        ax.tick_params(labelsize=7)
        if len(series) > 1 and ax is axes.flat[0]:
            ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(columns):]:
        ax.axis("off")
    fig.suptitle("dots: seeds; squares: mean ± std over seeds (group metrics: one value)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def write_grid_png(path: Path, keys: list[str], groups) -> Path | None:
    """rows = settings, columns = seeds, the first frame of each run's turntable."""
    if not groups:
        return None
    seeds = sorted({r.seed for _, members in groups for r in members},
                   key=lambda s: (0, float(s)) if _is_number(s) else (1, s))
    plt = plt_agg()
    fig, axes = plt.subplots(len(groups), len(seeds), squeeze=False,
                             figsize=(GRID_CELL_INCHES * len(seeds) + 1.2, GRID_CELL_INCHES * len(groups)))
    for i, (setting, members) in enumerate(groups):
        by_seed = {r.seed: r for r in members}
        for j, seed in enumerate(seeds):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            run = by_seed.get(seed)
            frames = run_frames(run.dir) if run is not None and run.finished else None
            if frames is not None:
                ax.imshow(frames.rgb[0])
            else:
                ax.text(0.5, 0.5, "no run" if run is None else (run.status if not run.finished else "no renders"),
                        ha="center", va="center", fontsize=8, transform=ax.transAxes)
            if i == 0:
                ax.set_title(f"seed {seed}", fontsize=8)
            if j == 0:
                ax.set_ylabel("\n".join(f"{k}={setting[k]}" for k in keys) or "all", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def write_views_png(path: Path, title: str, members, row_notes: dict[str, str] | None = None,
                    n_views: int = VIEWS_PER_RUN) -> Path | None:
    """One setting's runs: rows = seeds, columns = ``n_views`` evenly spaced frames of each run."""
    frames = {r.seed: run_frames(r.dir) if r.finished else None for r in members}
    k = max((len(f.rgb) for f in frames.values() if f is not None), default=0)
    if k == 0:
        return None
    picks = list(range(0, k, -(-k // n_views)))  # evenly spaced: every ceil(k / n_views)-th frame
    plt = plt_agg()
    fig, axes = plt.subplots(len(members), len(picks), squeeze=False,
                             figsize=(GRID_CELL_INCHES * len(picks) + 1.2, GRID_CELL_INCHES * len(members) + 0.4))
    for i, run in enumerate(members):
        f = frames[run.seed]
        for j, v in enumerate(picks):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if f is not None and v < len(f.rgb):
                ax.imshow(f.rgb[v])
            elif j == 0:
                ax.text(0.5, 0.5, run.status if not run.finished else "no renders", ha="center", va="center",
                        fontsize=8, transform=ax.transAxes)
            if i == 0:
                cams = f.cameras if f is not None else None
                ax.set_title(f"az {cams['azimuth_deg'][v]:.0f}°" if cams and "azimuth_deg" in cams
                             else f"view {v}", fontsize=8)
            if j == 0:
                note = (row_notes or {}).get(run.seed)
                ax.set_ylabel(f"seed {run.seed}" + (f"\n{note}" if note else ""), fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def _binned(jsonl: Path, key: str, edges: np.ndarray) -> np.ndarray | None:
    """A run's mean of ``key`` in each step bin (NaN where it logged none), or None."""
    if not jsonl.exists():
        return None
    steps, vals = [], []
    for line in jsonl.read_text().splitlines():
        try:
            r = json.loads(line)
        except ValueError:  # a half-written line (src/loggers.py drops it on resume)
            continue
        v = r.get(key) if isinstance(r, dict) else None
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and "step" in r:
            steps.append(r["step"])
            vals.append(v)
    if not vals:
        return None
    idx = np.clip(np.searchsorted(edges, steps, side="right") - 1, 0, len(edges) - 2)
    sums = np.bincount(idx, vals, minlength=len(edges) - 1)
    counts = np.bincount(idx, minlength=len(edges) - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def seed_mean_curves(members, key: str, max_step: int, bins: int = CURVE_BINS):
    """(bin centres (B,), mean over seeds (B,), std over seeds (B,), seeds used) of ``key``."""
    edges = np.linspace(0, max_step + 1, min(bins, max_step + 1) + 1)
    per_seed = [c for c in (_binned(Path(r.dir) / "metrics.jsonl", key, edges) for r in members) if c is not None]
    if not per_seed:
        return None
    stack = np.stack(per_seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a bin no seed logged in: NaN
        mean = np.nanmean(stack, 0)
        std = np.nanstd(stack, 0, ddof=1) if len(stack) > 1 else np.zeros_like(mean)
    return (edges[:-1] + edges[1:]) / 2, mean, std, len(stack)


def write_curves_png(path: Path, groups, labels: list[str], colors: list[str], keys=None) -> Path | None:
    """Per curve key a panel, per setting the seed-averaged binned curve with its ± std band."""
    from src.export.plots import CURVES

    max_step = 0
    for _, members in groups:
        for r in members:
            steps = r.metrics.get("steps")
            max_step = max(max_step, int(steps) if steps else 0)
    if max_step == 0:  # unfinished runs only: read the steps from the logs
        return None
    panels = []
    for key in keys or CURVES:
        series = [(lab, col, seed_mean_curves(m, key, max_step)) for (_, m), lab, col in zip(groups, labels, colors)]
        series = [s for s in series if s[2] is not None]
        if series:
            panels.append((key, series))
    if not panels:
        return None
    plt = plt_agg()
    fig, axes = plt.subplots(1, len(panels), figsize=(PANEL_INCHES[0] * 1.3 * len(panels), PANEL_INCHES[1] * 1.2),
                             squeeze=False)
    for ax, (key, series) in zip(axes[0], panels):
        for lab, col, (x, mean, std, n) in series:
            ok = np.isfinite(mean)
            ax.plot(x[ok], mean[ok], color=col, lw=1.5, label=f"{lab} ({n} seeds)")
            ax.fill_between(x[ok], (mean - std)[ok], (mean + std)[ok], color=col, alpha=0.2, lw=0)
        ax.set_title(f"{key}: mean over seeds ± std", fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0, 0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
