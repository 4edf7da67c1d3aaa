"""The exact ShapesWorld tables of finished sweeps (sweeps/shapes_modes.yaml, shapes_janus.yaml):

    python scripts/shapes_tables.py multirun/shapes_modes [--out benchmarks/shapes_modes]
    python scripts/shapes_tables.py benchmarks/shapes_modes_nerf.json multirun/gs --out ...

Reads every run's metrics.json under each sweep dir (src/studies/runs.py), and the rows
of any table JSON this script wrote before (a table assembled from runs made on two machines),
and writes ``<out>.json`` = {"sweep": [sources], "rows": [{"method", "seed", "mode_id",
"precision", "janus_rate", "prior", "device", "git", ...}], "table": {"method/representation[/prior]": summary}}
and ``<out>.md``: per method, representation and prior (``backbone.view_conditioning`` of the
run's composed config: ``camera``, the default, or ``prompt``, the view prompt's bin as Stable
Diffusion knows it; a column and a key suffix only where a run did not use the default) the
mode_id of each seed, the number of distinct modes, the mode entropy, the mean precision and the
mean janus_rate. Unfinished or failed runs are listed, never averaged in.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
from collections import Counter
from pathlib import Path

import yaml

from src.metrics.modes import distinct_modes, mode_entropy
from src.studies.runs import find_runs, machine_of
from src.studies.tables import fmt, markdown_table, write_study

DEFAULT_PRIOR = "camera"  # conf/backbone/shapes.yaml's view_conditioning
# runs made before the knob existed (no view_conditioning in their config or row) knew the view by its bin
LEGACY_PRIOR = "prompt"
KEYS = ("mode_id", "nearest_class", "precision", "rmse", "janus_rate", "face_recall", "steps_per_s", "wall_time_s")


def prior_of(run_dir: Path, overrides: dict) -> str:
    """The run's prior: ShapesWorld's view conditioning (its composed config, else its overrides),
    or ``learned (<model dir>)`` for a diffusers model of a world (backbone.path: e.g.
    models/shapes_ldm, scored by the same exact metrics through its world.yaml)."""
    config = run_dir / ".hydra" / "config.yaml"
    if config.exists():
        backbone = (yaml.safe_load(config.read_text()) or {}).get("backbone") or {}
        if backbone.get("path"):
            return f"learned ({Path(str(backbone['path'])).name})"
        return str(backbone.get("view_conditioning", LEGACY_PRIOR))
    return overrides.get("backbone.view_conditioning", DEFAULT_PRIOR)


def row_order(r: dict) -> tuple:
    """(experiment, prior, representation, method, seed): rows sort by it, tables group by its
    first four (a sweep over experiments, e.g. the cone and the Janus world, keeps them apart;
    "" for a run without one)."""
    return r.get("experiment", ""), r["prior"], r["representation"], r["method"], r["seed"]


def collect(sweep_dir: Path) -> tuple[list[dict], list[str]]:
    rows, missing = [], []
    for run in find_runs(sweep_dir):
        ov = run.overrides
        if not run.finished:
            missing.append(f"{run.dir} ({run.status}{': ' + run.error if run.error else ''})")
            continue
        row = {"method": ov.get("guidance", "?"), "representation": ov.get("representation", "nerf"),
               "prior": prior_of(run.dir, ov), "seed": int(ov.get("seed", 0)), "run": run.dir.name,
               **({"experiment": ov["experiment"]} if ov.get("experiment") else {})}
        row.update({k: run.metrics.get(k) for k in KEYS if k in run.metrics})
        row.update(machine_of(run.dir))
        if row.get("mode_id") is not None:
            row["mode_id"] = int(row["mode_id"])
        rows.append(row)
    return rows, missing


def rows_of_table(path: Path) -> tuple[list[dict], list[str]]:
    """The rows (and unfinished runs) of a table JSON written by this script."""
    data = json.loads(path.read_text())
    rows = [{**r, "prior": r.get("prior", LEGACY_PRIOR)} for r in data["rows"]]
    return rows, list(data.get("unfinished", []))


def summarize(rows: list[dict]) -> dict:
    groups: dict[tuple, list[dict]] = {}
    for r in sorted(rows, key=row_order):
        groups.setdefault(row_order(r)[:4], []).append(r)
    table = {}
    for (experiment, prior, rep, method), rs in groups.items():
        modes = [r["mode_id"] for r in rs]
        entropy = mode_entropy(modes)
        janus = [r["janus_rate"] for r in rs if r.get("janus_rate") is not None]
        recall = [r["face_recall"] for r in rs if r.get("face_recall") is not None]
        key = (f"{method}/{rep}" + ("" if prior == DEFAULT_PRIOR else f"/{prior}")
               + (f"@{experiment}" if experiment else ""))
        table[key] = {
            "method": method, "representation": rep, "prior": prior,
            **({"experiment": experiment} if experiment else {}), "seeds": [r["seed"] for r in rs],
            "mode_ids": modes,
            "distinct_modes": distinct_modes(modes),
            # NaN (no seed reached a mode) is written null: the JSON stays strict
            "mode_entropy_bits": None if math.isnan(entropy) else entropy,
            "mean_precision": sum(r.get("precision") or 0.0 for r in rs) / len(rs),  # null: no mode
            "mean_janus_rate": sum(janus) / len(janus) if janus else None,
            # a faceless object has janus_rate 0 too: where the truth shows its face, does the render?
            **({"mean_face_recall": sum(recall) / len(recall)} if recall else {}),
        }
    return table


LEGEND = ("mode_id: the world class reached (shape * n_colors + color, -1 = none within the precision "
          "threshold); distinct modes and mode entropy (bits, over the seeds that reached a mode) "
          "count diversity; precision and janus_rate are means over seeds.")


def table_lines(table: dict) -> list[str]:
    """The per-method table (a prior column only where some row is not the default prior)."""
    with_prior = any(t.get("prior", LEGACY_PRIOR) != DEFAULT_PRIOR for t in table.values())
    with_recall = any("mean_face_recall" in t for t in table.values())
    with_experiment = any(t.get("experiment") for t in table.values())
    numbers = ["distinct modes", "mode entropy (bits)", "mean precision", "mean janus_rate",
               *(["mean face_recall"] if with_recall else [])]
    head = [*(["experiment"] if with_experiment else []), "method", "representation",
            *(["prior"] if with_prior else []), "mode_id per seed", *numbers]
    cells = []
    for t in table.values():
        janus = "" if t["mean_janus_rate"] is None else f"{t['mean_janus_rate']:.2f}"
        entropy = "-" if t["mode_entropy_bits"] is None else f"{t['mode_entropy_bits']:.2f}"
        cells.append([*([t.get("experiment", "")] if with_experiment else []), t["method"], t["representation"],
                      *([t.get("prior", LEGACY_PRIOR)] if with_prior else []),
                      " ".join(map(str, t["mode_ids"])), str(t["distinct_modes"]), entropy,
                      f"{t['mean_precision']:.2f}", janus,
                      *([fmt(t.get("mean_face_recall"), ".2f")] if with_recall else [])])
    return markdown_table(head, cells, right=numbers)


def cell(t: dict | None) -> str:
    """One group's summary in one cell: distinct modes, entropy, mean precision (, janus_rate)."""
    if t is None:
        return ""
    entropy = "-" if t["mode_entropy_bits"] is None else f"{t['mode_entropy_bits']:.2f}"
    janus = "" if t["mean_janus_rate"] is None else f", janus {t['mean_janus_rate']:.2f}"
    return f"{t['distinct_modes']} modes, {entropy} bits, precision {t['mean_precision']:.2f}{janus}"


def beside_lines(table: dict, beside: dict[str, dict]) -> list[str]:
    """Per method, this study's groups beside the groups of earlier tables (e.g. the exact prior of
    the same world beside its learned twin): one column per (source, prior, experiment) group."""
    columns: dict[str, dict] = {"this study": table, **beside}
    heads, cells = [], {}
    for source, tab in columns.items():
        for t in tab.values():
            head = f"{source}: {t.get('prior', LEGACY_PRIOR)}" + (f" @ {t['experiment']}" if t.get("experiment") else "")
            if head not in heads:
                heads.append(head)
            cells[(t["method"], t["representation"], head)] = t
    keys = sorted({(m, r) for m, r, _ in cells})
    body = [[m, r, *(cell(cells.get((m, r, h))) for h in heads)] for m, r in keys]
    return markdown_table(["method", "representation", *heads], body)


def markdown(title: str, table: dict, missing: list[str], command: str, beside: dict | None = None) -> str:
    lines = [f"# {title}", "", f"`{command}`", "", LEGEND, ""] + table_lines(table)
    if beside:
        lines += ["", "Beside: " + ", ".join(f"`{k}`" for k in beside) + " (each group's distinct modes, mode "
                  "entropy, mean precision and mean janus_rate over its seeds)", ""] + beside_lines(table, beside)
    if missing:
        lines += ["", f"Unfinished or failed runs ({len(missing)}):", ""] + [f"- `{m}`" for m in missing]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sources", type=Path, nargs="+", help="sweep dirs, or table JSONs written by this script")
    p.add_argument("--out", default=None, help="default: benchmarks/<first source's name>")
    p.add_argument("--title", default=None)
    p.add_argument("--beside", type=Path, nargs="*", default=[],
                   help="table JSONs shown per method beside this one (their NeRF groups), not joined")
    args = p.parse_args(argv)
    rows, missing = [], []
    for source in args.sources:
        more, lost = rows_of_table(source) if source.suffix == ".json" else collect(source)
        rows, missing = rows + more, missing + lost
    # a run cut off in one source and finished in another (a study resumed on a second machine) is done
    done = {r["run"] for r in rows if r.get("run")}
    missing = [m for m in missing if Path(m.split(" (")[0]).name not in done]
    twice = sorted(k for k, n in Counter(map(row_order, rows)).items() if n > 1)
    if twice:  # one seed's run counted twice would weigh double in the means
        print(f"error: runs in more than one source: {twice}", file=sys.stderr)
        return 2
    if not rows:
        print(f"no finished runs under {', '.join(map(str, args.sources))}", file=sys.stderr)
        return 2
    rows = sorted(rows, key=row_order)
    name = args.sources[0].stem if args.sources[0].suffix == ".json" else args.sources[0].name
    out = Path(args.out or Path("benchmarks") / name)
    table = summarize(rows)
    command = "python scripts/shapes_tables.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    beside = {str(b): {k: t for k, t in json.loads(b.read_text())["table"].items() if t["representation"] == "nerf"}
              for b in args.beside}
    md = markdown(args.title or f"ShapesWorld: {name}", table, missing, command, beside)
    write_study(out, {"sweep": [str(s) for s in args.sources], "rows": rows, "table": table, "unfinished": missing,
                      **({"beside": beside} if beside else {})}, md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
