"""The report of a sweep directory: report.csv, report.md, report.html (one file, figures
inline) and its figures.

Rows are the settings of the swept keys without the seed (``SEED_KEY``), the method and its
knobs first (``order_keys``). Per setting:
- categorical per-run metrics (``modes.CATEGORICAL``: ``mode_id``, ``nearest_class``) as the
  per-seed list, never a mean, named where the backbone names its classes ("yellow cone":
  src/studies/context.py); for ``mode_id`` also the number of distinct modes and the mode
  entropy (src/metrics/modes.py);
- continuous per-run metrics as mean ± sample std with n (the runs where the value is a finite
  number: NaN and null are left out and n says so);
- group metrics of ``make evaluate`` (LPIPS-D, CLIP-D, Chamfer-D, FID, KID; src/metrics/),
  read from ``<sweep_dir>/evaluation.json`` when it covers exactly the setting's finished runs.
The table's columns: the swept keys, n, then diversity, quality and cost (``DIVERSITY``,
``QUALITY``, ``COST``; metrics no list names between quality and cost). A metric equal to an
earlier one on every finished run (``mode_frac`` is ``precision`` whenever the views that
match a prompt class all match the mode) is shown once and named in a line below the
table. Metrics computed with random test weights are marked † and left out of the plots.
The header states what every run shares (src/studies/context.py: the sweep's fixed overrides,
prompt, steps, seeds) and, where the prior knows it, the truth's class distribution.
Figures: tradeoff.png and modes.png (src/studies/figures_modes.py), curves.png, one
views_<setting>.png per setting, report.png and grid.png (src/studies/figures.py).
Timing and config-echo columns (``CSV_ONLY``) go to the CSV only. Runs whose metrics.json says
``status`` "diverged" or "failed" are listed with their error, runs without metrics.json as
unfinished; neither enters a statistic. A metrics.json without ``status`` is a finished run.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import statistics
from pathlib import Path

from src.metrics.modes import CATEGORICAL, distinct_modes, mode_entropy
from src.studies import page
from src.studies.context import ClassWorld, class_world, fixed_settings
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
from src.studies.tables import fmt, write_text

MODE_KEY = "mode_id"  # the categorical metric whose distinct values are the modes
EVALUATION = "evaluation.json"  # what src/studies/evaluate.py writes
REPORT_CSV, REPORT_MD, REPORT_HTML = "report.csv", "report.md", "report.html"
REPORT_PNG, GRID_PNG, TRADEOFF_PNG, MODES_PNG, CURVES_PNG = (
    "report.png", "grid.png", "tradeoff.png", "modes.png", "curves.png")
VIEWS_PREFIX = "views_"  # views_<setting>.png
METHOD_KEY = "guidance"  # the method; its knobs are guidance.<name>
# Per-run values that describe how a run ran, not what it made: CSV only.
CSV_ONLY = ("steps", "steps_per_s", "final_loss", "any_view", "failed_step", "last_good_step",
            "resumed_from_step")
# The table's column groups, in order (ShapesWorld's, mog2d's and the evaluation's metrics).
DIVERSITY = ("mode_id_per_seed", "distinct_modes", "mode_entropy", "modes_found", "mode_coverage",
             "lpips_d", "clip_d", "chamfer_d", "iv", "ig")
QUALITY = ("precision", "mode_frac", "rmse", "nearest_class_per_seed", "janus_rate", "clip_distance", "iq",
           "fid", "kid")
COST = ("wall_time_s",)
# The axes of tradeoff.png: the first of each list the report has (and not from random weights).
DIVERSITY_AXES = (("mode_entropy", "mode entropy of the seeds' modes (bits)"),
                  ("modes_found", "modes found (mean over seeds)"), ("lpips_d", "LPIPS-D"),
                  ("clip_d", "CLIP-D"), ("chamfer_d", "Chamfer-D"))
QUALITY_AXES = (("precision", "precision (mean over seeds)"),
                ("clip_distance", "CLIP distance to the prompt (mean over seeds; lower: closer)"))
QUALITY_RANGE = {"precision": (0.0, 1.0)}  # a fraction of views: the plot shows all of it
RANDOM_MARK = "†"
# (metric, the metric it repeats by construction where they are equal): shown once even when
# constant (src/backbones/shapes_metrics.py: both count the views that match the mode's class).
REPEATS = {("mode_frac", "precision")}
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


def order_keys(keys: list[str]) -> list[str]:
    """The method first, then its knobs (guidance.*), then the other swept keys in their order."""
    rank = {k: 0 if k == METHOD_KEY else 1 if k.startswith(METHOD_KEY + ".") else 2 for k in keys}
    return sorted(keys, key=lambda k: rank[k])


def aggregate(runs: list[Run], keys: list[str], sweep_dir: Path | None = None,
              evaluation: dict | None = None, world: ClassWorld | None = None) -> tuple[list[str], list[dict]]:
    """(per-run metric names, one row per setting). A row holds the setting, n, n_finished,
    seeds, and per metric: ``<m>_mean/_std/_n`` (continuous) or ``<m>_per_seed`` (plus
    ``<m>_names`` with a ``world``) and ``distinct_modes`` / ``mode_entropy`` (categorical),
    then the group metrics."""
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
                if world is not None:
                    row[f"{m}_names"] = ", ".join(world.name(v) for v in vals)
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
    """The per-row columns a reader sees (report.md / .html, report.png): diversity, quality,
    the metrics no group names, cost."""
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
    order = {c: i for i, c in enumerate((*DIVERSITY, *QUALITY))}
    rank = {c: (0 if c in DIVERSITY else 1 if c in QUALITY else 3 if c in COST else 2, order.get(c, 0)) for c in cols}
    return sorted(cols, key=lambda c: rank[c])  # stable: unnamed metrics keep their order


def duplicates(columns: list[str], runs: list[Run]) -> dict[str, str]:
    """{column: the earlier column it equals}: continuous per-run metrics whose value is the same
    on every finished run (at least one value), e.g. mode_frac and precision. Two columns that
    are both one constant (janus_rate and precision both 0 on every run) are a coincidence, not a
    repeat, unless ``REPEATS`` names the pair."""
    done = [r for r in runs if r.finished]
    out: dict[str, str] = {}
    for i, c in enumerate(columns):
        vals = [r.metrics.get(c) for r in done]
        if c in CATEGORICAL or all(v is None for v in vals):
            continue
        for earlier in columns[:i]:
            if earlier not in out and [r.metrics.get(earlier) for r in done] == vals \
                    and (len(set(vals)) > 1 or (c, earlier) in REPEATS):
                out[c] = earlier
                break
    return out


def random_weight_columns(evaluation: dict | None) -> set[str]:
    """The columns computed with random test weights (src/metrics/models.py): marked, not plotted."""
    if not evaluation or evaluation.get("weights") != "random":
        return set()
    return set(evaluation.get("metrics", [])) | {"kid_std"}


def _cell(row: dict, col: str) -> str:
    if f"{col}_mean" in row:
        mean, std, n = row[f"{col}_mean"], row[f"{col}_std"], row[f"{col}_n"]
        if mean is None:
            return ""
        text = fmt(mean) + (f" ± {fmt(std)}" if std is not None else "")
        return text + (f" (n={n})" if n != row["n_finished"] else "")
    if col == "kid" and row.get("kid_std") is not None and row.get("kid") is not None:
        return f"{fmt(row['kid'])} ± {fmt(row['kid_std'])}"
    names = col.removesuffix("_per_seed") + "_names"
    if col.endswith("_per_seed") and row.get(names):
        return row[names]
    return fmt(row.get(col))


def _setting_text(row: dict, keys: list[str]) -> str:
    return "`" + (",".join(f"{k}={row[k]}" for k in keys) or "all") + "`"


def report_blocks(keys: list[str], names: list[str], rows: list[dict], runs: list[Run],
                  failed_text: str = "", evaluation: dict | None = None, figures: list[tuple[str, str]] = (),
                  fixed: list[tuple[str, str]] = (), world: ClassWorld | None = None) -> list:
    """The report's page (src/studies/page.py blocks); ``figures`` (file, caption)."""
    shown = science_columns(names, rows)
    dup = duplicates(shown, runs)
    cols = [c for c in shown if c not in dup]
    marked = random_weight_columns(evaluation)
    blocks: list = []
    if fixed:
        blocks.append(page.Para("**Fixed in every run**: " + ", ".join(f"`{k}={v}`" for k, v in fixed) + "."))
    if world is not None and world.truth:
        modes = ", ".join(f"{world.name(k)} {p:.0%}" for k, p in sorted(world.truth.items(), key=lambda kv: -kv[1]))
        blocks.append(page.Para(f"**Truth** (the prior's p(class | `{world.prompt}`)): {modes}: "
                                f"{len(world.truth)} modes, entropy {world.truth_entropy:.3g} bits."))
    blocks.append(page.Para(
        "Columns: the method and its knobs, n (finished runs), then diversity, quality and cost. "
        "Continuous metrics as mean ± sample std over seeds ((n=k) where only k runs have a finite value); "
        "`mode_id` as the class each seed reached, with the distinct count and the entropy (bits) of them; "
        "group metrics once per setting; `wall_time_s`: seconds per run. Other timing columns: report.csv."))
    if evaluation is not None:
        w = evaluation.get("weights")
        blocks.append(page.Para(
            f"Group metrics: `{EVALUATION}` (weights: **{w}**"
            + (f"; {RANDOM_MARK} random test weights: numbers test the plumbing only, left out of the plots"
               if w == "random" else "")
            + f"; prior samples for FID/KID: {evaluation.get('prior_samples', {}).get('how', 'none')})."))
    head = [*keys, "n", *(c + (RANDOM_MARK if c in marked else "") for c in cols)]
    cells = []
    for row in rows:
        n = f"{row['n_finished']}" + ("" if row["n_finished"] == row["n"] else f"/{row['n']}")
        cells.append([str(row[k]) for k in keys] + [n] + [_cell(row, c) for c in cols])
    blocks.append(page.Table(head, cells, right=[h for h, c in zip(head[len(keys):], ["n", *cols])
                                                 if not c.endswith("_per_seed")]))
    if dup:
        blocks.append(page.Para("Shown once: " + ", ".join(f"`{c}` equals `{o}` on every finished run"
                                                           for c, o in dup.items()) + " (both in report.csv)."))
    stale = [row for row in rows if row.get("evaluation") in ("stale", "missing")]
    if stale:
        blocks.append(page.Para("Group metrics left blank for " + ", ".join(
            _setting_text(row, keys) + f" ({row['evaluation']})" for row in stale)
            + ": the runs changed since `make evaluate`; run it again."))
    for file, caption in figures:
        blocks.append(page.Figure(file, caption))
    bad = [r for r in runs if r.status not in (FINISHED, UNFINISHED)]
    if bad:
        blocks += [page.Heading(f"Failed runs ({len(bad)})"), page.Items([
            f"`{r.dir}`: {r.status}" + (f" at step {int(r.metrics['failed_step'])}"
                                        if r.metrics.get("failed_step") is not None else "")
            + (f": {r.error}" if r.error else "") for r in bad])]
    unfinished = [r for r in runs if r.status == UNFINISHED]
    if unfinished:
        blocks += [page.Heading(f"Unfinished runs ({len(unfinished)})"), page.Items([f"`{r.dir}`" for r in unfinished])]
    if failed_text:
        blocks += [page.Heading("Failed jobs"), page.Code(failed_text)]
    return blocks


def _axis(rows: list[dict], axes, hidden: set[str]) -> tuple[str, str] | None:
    for name, label in axes:
        if name not in hidden and any(r.get(f"{name}_mean", r.get(name)) is not None
                                      or name == "mode_entropy" and r.get("distinct_modes") is not None for r in rows):
            return name, label
    return None


def write_figures(sweep_dir: Path, keys: list[str], names: list[str], rows: list[dict], groups,
                  runs: list[Run], evaluation: dict | None, world: ClassWorld | None) -> list[tuple[str, str]]:
    """Draw the report's figures into sweep_dir; (file, caption) of those drawn, in page order."""
    from src.studies import figures, figures_modes

    hidden = random_weight_columns(evaluation)
    labels = [figures_modes.setting_label(s) for s, _ in groups]
    colors = [figures_modes.setting_color(i) for i in range(len(groups))]
    made = []
    div, qual = _axis(rows, DIVERSITY_AXES, hidden), _axis(rows, QUALITY_AXES, hidden)
    if div and qual:
        points = []
        for lab, col, row in zip(labels, colors, rows):
            y = row.get(f"{div[0]}_mean", row.get(div[0]))
            if y is None and div[0] == "mode_entropy" and row.get("distinct_modes") == 0:
                y, lab = 0.0, f"{lab} (no seed reached a mode)"  # no diversity, though no entropy either
            points.append({"label": lab, "color": col, "x": row.get(f"{qual[0]}_mean"),
                           "x_std": row.get(f"{qual[0]}_std"), "y": y, "y_std": row.get(f"{div[0]}_std")})
        n_seeds = max((row["n_finished"] for row in rows), default=0)
        if figures_modes.write_tradeoff_png(sweep_dir / TRADEOFF_PNG, points, qual[1], div[1], world, n_seeds,
                                            QUALITY_RANGE.get(qual[0])):
            made.append((TRADEOFF_PNG, f"Diversity against quality: {div[0]} against {qual[0]}, one point per setting."))
    panels = [{"label": lab, "color": col, "mode_ids": [r.metrics.get(MODE_KEY) for r in m if r.finished
                                                        and MODE_KEY in r.metrics]}
              for lab, col, (_, m) in zip(labels, colors, groups)]
    if figures_modes.write_modes_png(sweep_dir / MODES_PNG, panels, world):
        made.append((MODES_PNG, "The mode each seed reached (fraction of seeds), beside the truth (hatched)."))
    if figures.write_curves_png(sweep_dir / CURVES_PNG, groups, labels, colors):
        made.append((CURVES_PNG, "Training curves averaged over seeds (binned over steps; band: ± std over seeds)."))
    for lab, (setting, members) in zip(labels, groups):
        notes = {r.seed: world.name(r.metrics.get(MODE_KEY)) for r in members
                 if world is not None and r.finished and MODE_KEY in r.metrics}
        file = VIEWS_PREFIX + (re.sub(r"[^A-Za-z0-9.=-]+", "_", ",".join(f"{k}={v}" for k, v in setting.items()))
                               or "all") + ".png"
        if figures.write_views_png(sweep_dir / file, lab, members, notes):
            made.append((file, f"{lab}: every seed, views evenly spaced around its turntable."))
    plotted = [c for c in science_columns(names, rows) if c.removesuffix("_per_seed") not in hidden
               and c not in hidden and c not in duplicates(science_columns(names, rows), runs)]
    if figures.write_report_png(sweep_dir / REPORT_PNG, keys, plotted, rows, groups):
        made.append((REPORT_PNG, "Every metric against the swept knob: dots are seeds, squares mean ± std."))
    if figures.write_grid_png(sweep_dir / GRID_PNG, keys, groups):
        made.append((GRID_PNG, "Settings x seeds, the front view of each run."))
    return made


def write_report(sweep_dir: Path, figures: bool = True) -> tuple[Path, Path]:
    """Collect <sweep_dir>'s runs into report.csv, report.md, report.html (+ figures)."""
    sweep_dir = Path(sweep_dir)
    runs = find_runs(sweep_dir)
    if not runs:
        raise FileNotFoundError(f"no runs (.hydra/overrides.yaml) under {sweep_dir}")
    keys = order_keys(group_keys(runs, sweep_dir))
    evaluation = load_evaluation(sweep_dir)
    world = class_world(runs)
    names, rows = aggregate(runs, keys, sweep_dir, evaluation, world)
    groups = group_runs(runs, keys)
    made = write_figures(sweep_dir, keys, names, rows, groups, runs, evaluation, world) if figures else []
    failed = sweep_dir / "failed.txt"
    blocks = report_blocks(keys, names, rows, runs, failed.read_text() if failed.exists() else "", evaluation,
                           made, fixed_settings(runs, sweep_dir, keys), world)
    csv_path, md_path = sweep_dir / REPORT_CSV, sweep_dir / REPORT_MD
    write_text(csv_path, render_csv(rows))
    write_text(md_path, page.to_markdown(sweep_dir.name, blocks))
    write_text(sweep_dir / REPORT_HTML, page.to_html(sweep_dir.name, blocks, sweep_dir))
    return csv_path, md_path
