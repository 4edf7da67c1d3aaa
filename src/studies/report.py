"""The report of a sweep directory: report.csv, report.md, report.png and grid.png.

Rows are the settings of the swept keys without the seed (``SEED_KEY``). Per setting:
- categorical per-run metrics (``modes.CATEGORICAL``: ``mode_id``, ``nearest_class``) as the
  per-seed list, never a mean; for ``mode_id`` also the number of distinct modes and the mode
  entropy (src/metrics/modes.py);
- continuous per-run metrics as mean ± sample std with n (the runs where the value is a finite
  number: NaN and null are left out and n says so);
- group metrics of ``make evaluate`` (LPIPS-D, CLIP-D, Chamfer-D, FID, KID; src/metrics/),
  read from ``<sweep_dir>/evaluation.json`` when it covers exactly the setting's finished runs.
Timing and config-echo columns (``CSV_ONLY``) go to the CSV only. Runs whose metrics.json says
``status`` "diverged" or "failed" are listed with their error, runs without metrics.json as
unfinished; neither enters a statistic. A metrics.json without ``status`` is a finished run.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from pathlib import Path

from src.metrics.modes import CATEGORICAL, distinct_modes, mode_entropy
from src.studies.runs import (
    FINISHED,
    UNFINISHED,
    Run,
    find_runs,
    group_keys,
    group_runs,
    number,
    relative,
)
from src.studies.tables import fmt, markdown_table, write_text

MODE_KEY = "mode_id"  # the categorical metric whose distinct values are the modes
EVALUATION = "evaluation.json"  # what src/studies/evaluate.py writes
REPORT_CSV, REPORT_MD, REPORT_PNG, GRID_PNG = "report.csv", "report.md", "report.png", "grid.png"
# Per-run values that describe how a run ran, not what it made: CSV only.
CSV_ONLY = ("steps", "wall_time_s", "steps_per_s", "final_loss", "any_view", "failed_step",
            "last_good_step", "resumed_from_step")
# Group metrics (src/studies/evaluate.py), in report order; kid_std is KID's spread over subsets.
GROUP_METRICS = ("lpips_d", "clip_d", "chamfer_d", "fid", "kid", "kid_std")


# -- statistics ------------------------------------------------------------------------------


def summarize(values: list[float | None]) -> tuple[float | None, float | None, int]:
    """(mean, sample std (n - 1), n) over the finite values; std None below two."""
    xs = [v for v in values if v is not None]
    return (statistics.fmean(xs) if xs else None, statistics.stdev(xs) if len(xs) > 1 else None, len(xs))


def load_evaluation(sweep_dir: Path) -> dict | None:
    path = Path(sweep_dir) / EVALUATION
    return json.loads(path.read_text()) if path.exists() else None


def _group_entry(evaluation: dict | None, setting: dict[str, str], run_keys: list[str]) -> dict | None:
    """The evaluation of this setting if it covers exactly these runs (else it is stale)."""
    for g in (evaluation or {}).get("groups", []):
        if g.get("setting") == setting:
            return g if sorted(g.get("runs", [])) == sorted(run_keys) else {"stale": True}
    return None


def aggregate(runs: list[Run], keys: list[str], sweep_dir: Path | None = None,
              evaluation: dict | None = None) -> tuple[list[str], list[dict]]:
    """(per-run metric names, one row per setting). A row holds the setting, n, n_finished,
    seeds, and per metric: ``<m>_mean/_std/_n`` (continuous) or ``<m>_per_seed`` plus
    ``distinct_modes`` / ``mode_entropy`` (categorical), then the group metrics."""
    sweep_dir = Path(sweep_dir) if sweep_dir is not None else None
    per_run = {}
    if evaluation and sweep_dir is not None:
        per_run = evaluation.get("runs", {})
    for run in runs:  # per-run metrics of the evaluation join the run's own
        if run.finished and sweep_dir is not None:
            run.metrics.update({k: number(v) for k, v in per_run.get(relative(run, sweep_dir), {}).items()})
    names = sorted({m for r in runs if r.finished for m in r.metrics})
    rows = []
    for setting, members in group_runs(runs, keys):
        done = [r for r in members if r.finished]
        row: dict = {**setting, "n": len(members), "n_finished": len(done),
                     "seeds": " ".join(r.seed for r in done)}
        for m in names:
            vals = [r.metrics.get(m) for r in done]
            if m in CATEGORICAL:
                row[f"{m}_per_seed"] = " ".join("nan" if v is None else str(int(v)) for v in vals)
                if m == MODE_KEY:  # the diversity of the modes reached
                    row["distinct_modes"] = distinct_modes(vals) if done else None
                    ent = mode_entropy(vals)
                    row["mode_entropy"] = None if math.isnan(ent) else ent
            else:
                row[f"{m}_mean"], row[f"{m}_std"], row[f"{m}_n"] = summarize(vals)
        if sweep_dir is not None and evaluation is not None:
            entry = _group_entry(evaluation, setting, [relative(r, sweep_dir) for r in done])
            row["evaluation"] = "stale" if entry and entry.get("stale") else ("" if entry else "missing")
            for g in GROUP_METRICS:
                if g in evaluation.get("metrics", []) or g == "kid_std" and "kid" in evaluation.get("metrics", []):
                    row[g] = None if not entry or entry.get("stale") else number(entry.get(g))
        rows.append(row)
    return names, rows


# -- rendering -------------------------------------------------------------------------------


def render_csv(rows: list[dict]) -> str:
    if not rows:
        return ""
    fields = list(dict.fromkeys(k for r in rows for k in r))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fields)
    writer.writeheader()
    writer.writerows([{k: ("" if v is None else v) for k, v in r.items()} for r in rows])
    return out.getvalue()


def science_columns(names: list[str], rows: list[dict]) -> list[str]:
    """The per-row columns a reader sees (Markdown and report.png), in order."""
    cols = []
    for m in names:
        if m in CSV_ONLY:
            continue
        if m not in CATEGORICAL:
            cols.append(m)
            continue
        cols.append(f"{m}_per_seed")
        if m == MODE_KEY:
            cols += ["distinct_modes", "mode_entropy"]
    cols += [g for g in GROUP_METRICS if g != "kid_std" and any(g in r for r in rows)]
    return cols


def _cell(row: dict, col: str) -> str:
    if f"{col}_mean" in row:
        mean, std, n = row[f"{col}_mean"], row[f"{col}_std"], row[f"{col}_n"]
        if mean is None:
            return ""
        text = fmt(mean) + (f" ± {fmt(std)}" if std is not None else "")
        return text + (f" (n={n})" if n != row["n_finished"] else "")
    if col == "kid" and row.get("kid_std") is not None and row.get("kid") is not None:
        return f"{fmt(row['kid'])} ± {fmt(row['kid_std'])}"
    return fmt(row.get(col))


def render_markdown(title: str, keys: list[str], names: list[str], rows: list[dict], runs: list[Run],
                    failed_text: str = "", evaluation: dict | None = None, figures: list[str] = ()) -> str:
    cols = science_columns(names, rows)
    head = [*keys, "n", *cols]
    lines = [f"# {title}", "",
             "Per setting: continuous metrics as mean ± sample std over seeds ((n=k) where only k "
             "runs have a finite value); `mode_id` as the per-seed list with its distinct count and "
             "entropy (bits); group metrics once per setting. Timing columns: report.csv.", ""]
    if evaluation is not None:
        w = evaluation.get("weights")
        lines += [f"Group metrics: `{EVALUATION}` (weights: **{w}**"
                  + ("; random test weights: numbers test the plumbing only" if w == "random" else "")
                  + f"; prior samples for FID/KID: {evaluation.get('prior_samples', {}).get('how', 'none')}).", ""]
    cells = []
    for row in rows:
        n = f"{row['n_finished']}" + ("" if row["n_finished"] == row["n"] else f"/{row['n']}")
        cells.append([str(row[k]) for k in keys] + [n] + [_cell(row, c) for c in cols])
    lines += markdown_table(head, cells)
    stale = [row for row in rows if row.get("evaluation") in ("stale", "missing")]
    if stale:
        lines += ["", "Group metrics left blank for " + ", ".join(
            "`" + (",".join(f"{k}={row[k]}" for k in keys) or "all") + f"` ({row['evaluation']})" for row in stale)
            + ": the runs changed since `make evaluate`; run it again."]
    bad = [r for r in runs if r.status not in (FINISHED, UNFINISHED)]
    if bad:
        lines += ["", f"## Failed runs ({len(bad)})", ""]
        lines += [f"- `{r.dir}`: {r.status}" + (f" at step {int(r.metrics['failed_step'])}"
                                                 if r.metrics.get("failed_step") is not None else "")
                  + (f": {r.error}" if r.error else "") for r in bad]
    unfinished = [r for r in runs if r.status == UNFINISHED]
    if unfinished:
        lines += ["", f"## Unfinished runs ({len(unfinished)})", ""]
        lines += [f"- `{r.dir}`" for r in unfinished]
    if failed_text:
        lines += ["", "## Failed jobs", "", "```", failed_text.rstrip(), "```"]
    for fig in figures:
        lines += ["", f"![{fig}]({fig})"]
    return "\n".join(lines) + "\n"


def write_report(sweep_dir: Path, figures: bool = True) -> tuple[Path, Path]:
    """Collect <sweep_dir>'s runs into report.csv, report.md (+ report.png, grid.png)."""
    sweep_dir = Path(sweep_dir)
    runs = find_runs(sweep_dir)
    if not runs:
        raise FileNotFoundError(f"no runs (.hydra/overrides.yaml) under {sweep_dir}")
    keys = group_keys(runs, sweep_dir)
    evaluation = load_evaluation(sweep_dir)
    names, rows = aggregate(runs, keys, sweep_dir, evaluation)
    made = []
    if figures:
        from src.studies.figures import write_grid_png, write_report_png

        groups = group_runs(runs, keys)
        made = [p.name for p in (write_report_png(sweep_dir / REPORT_PNG, keys, science_columns(names, rows),
                                                  rows, groups),
                                 write_grid_png(sweep_dir / GRID_PNG, keys, groups))
                if p is not None]
    failed = sweep_dir / "failed.txt"
    md = render_markdown(sweep_dir.name, keys, names, rows, runs,
                         failed.read_text() if failed.exists() else "", evaluation, made)
    csv_path, md_path = sweep_dir / REPORT_CSV, sweep_dir / REPORT_MD
    write_text(csv_path, render_csv(rows))
    write_text(md_path, md)
    return csv_path, md_path
