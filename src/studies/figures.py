"""The report's figures (src/studies/report.py): report.png and grid.png, drawn with matplotlib (Agg).

- report.png: one panel per science metric against the swept knob (the last numeric swept key,
  else the first swept key; the other keys are separate series): each seed's value as a dot,
  mean ± sample std as an error bar; ``mode_id`` as the per-seed class ids (distinct modes are
  distinct heights); group metrics (one value per setting) as markers.
- grid.png: rows = settings, columns = seeds, one view each (the first turntable frame: the
  object's front, azimuth 0), failed or unfinished runs as a labelled empty cell.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from src.metrics.frames import run_frames
from src.metrics.modes import CATEGORICAL

GRID_CELL_INCHES = 1.6
PANEL_INCHES = (3.6, 2.6)


def _plt():
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
    plt = _plt()
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
    plt = _plt()
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
