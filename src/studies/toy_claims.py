"""The papers' toy claims, every number of the toy table (docs/results.md), in one study:

    python scripts/toy_claims.py [--jobs 2] [--sweep-dir multirun/toy_claims] [--no-run]
        -> benchmarks/toy_claims.{json,md}

The runs are ``sweeps/toy_claims.yaml`` (the sweep machinery, local launcher: one torch thread a
run); the tables are read from their directories:
- ESD App. B (experiment=esd_toy): covariance trace ratio of SDS, VSD and ESD(lam) and ESD's
  relative covariance error at lam = 1.
- SSD Sec. 13 (experiment=ssd_toy): median distance of the 8 particles (the final checkpoint's)
  to the transient point [1.5, 1] (mode seeking alone) and to the nearest conditional mode (SSD).
- The 4-mode mixture (experiment=mog_diversity, K = 64 particles from one point): modes covered
  (of 4) and precision, every method of conf/guidance/.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from src.configs import guidance_names
from src.studies.runs import Run, find_runs
from src.studies.tables import markdown_table, write_study
from src.sweeps import REPO_ROOT, load_sweep

SWEEP = "toy_claims"  # sweeps/toy_claims.yaml
LOCAL_PARALLELISM_ENV = "DISTILLERY_LOCAL_PARALLELISM"  # hydra_plugins/distillery_launchers
SSD_TRANSIENT = (1.5, 1.0)  # papers/ssd.txt Sec. 13: where mode seeking alone stops
SSD_MODES = ((1.0, 1.0), (2.0, 1.0))  # the toy's conditional modes (conf/backbone/ssd_toy.yaml)
COMMAND = "python scripts/toy_claims.py"
ESD_RUNS = ["sds", "vsd"] + [f"esd lam={lam}" for lam in (0.25, 0.5, 0.75, 1.0)]


def run_sweep(sweep_dir: Path, jobs: int) -> int:
    """The study's runs through the sweep machinery (resumes and skips what is done)."""
    env = {**os.environ, LOCAL_PARALLELISM_ENV: str(jobs)}
    cmd = [sys.executable, str(REPO_ROOT / "scripts" / "sweep.py"), SWEEP, "--launcher", "submitit_local",
           "--sweep-dir", str(sweep_dir)]
    return subprocess.call(cmd, cwd=REPO_ROOT, env=env)


def run_name(run: Run) -> str:
    ov = run.overrides
    return f"esd lam={ov['guidance.lam']}" if "guidance.lam" in ov else ov.get("guidance.terms", ov["guidance"])


def ssd_distances(run: Run) -> dict:
    """Median distance of the final particles to the transient point and to the nearest mode."""
    x = torch.load(run.dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    x = x["representation"]["x"].detach()
    transient = (x - torch.tensor(SSD_TRANSIENT, dtype=x.dtype)).norm(dim=1).median()
    mode = torch.cdist(x, torch.tensor(SSD_MODES, dtype=x.dtype)).min(dim=1).values.median()
    return {"median_to_transient": float(transient), "median_to_mode": float(mode)}


def collect(sweep_dir: Path, seeds: list[int]) -> tuple[list[dict], list[str]]:
    """The table rows, in the order claim, seed, run; and the runs that did not finish."""
    rows, missing = {}, []
    for run in find_runs(sweep_dir):
        if not run.finished:
            missing.append(f"{run.dir} ({run.status})")
            continue
        experiment, name, seed, m = run.overrides["experiment"], run_name(run), int(run.seed), run.metrics
        if experiment == "esd_toy":
            row = {"claim": "esd_app_b", "run": name, "seed": seed, "cov_trace_ratio": m["cov_trace_ratio"],
                   "cov_rel_error": m["cov_rel_error"], "mean_error": m["mean_error"]}
        elif experiment == "ssd_toy":
            row = {"claim": "ssd_sec13", "run": name, "seed": seed, **ssd_distances(run)}
        else:
            row = {"claim": "mog_diversity", "run": name, "seed": seed, "modes_found": m["modes_found"],
                   "mode_coverage": m["mode_coverage"], "precision": m["precision"]}
        rows[row["claim"], row["run"], seed] = row
    names = {"esd_app_b": ESD_RUNS, "ssd_sec13": ["seeking", "ssd"], "mog_diversity": guidance_names()}
    ordered = [rows[claim, n, s] for claim, ns in names.items() for s in seeds for n in ns if (claim, n, s) in rows]
    return ordered, missing


def markdown(rows: list[dict], seeds: list[int]) -> str:
    def cell(claim, name, key, fmt):
        vals = [r[key] for s in seeds for r in rows if r["claim"] == claim and r["run"] == name and r["seed"] == s]
        return " / ".join(format(v, fmt) for v in vals)

    lines = [f"# Toy claims (`{COMMAND}`, sweeps/toy_claims.yaml)", "",
             f"Values per seed ({' / '.join(map(str, seeds))}).", "", "## ESD App. B (experiment=esd_toy)", ""]
    lines += markdown_table(["run", "cov trace ratio", "cov rel. error"],
                            [[n, cell("esd_app_b", n, "cov_trace_ratio", ".3g"),
                              cell("esd_app_b", n, "cov_rel_error", ".3f")] for n in ESD_RUNS])
    lines += ["", "## SSD Sec. 13 (experiment=ssd_toy, median over 8 particles)", ""]
    lines += markdown_table(["terms", "to transient [1.5, 1]", "to nearest conditional mode"],
                            [[t, cell("ssd_sec13", t, "median_to_transient", ".3f"),
                              cell("ssd_sec13", t, "median_to_mode", ".3f")] for t in ("seeking", "ssd")])
    lines += ["", "## 4-mode mixture (experiment=mog_diversity, K = 64 from one point)", ""]
    lines += markdown_table(["method", "modes found (of 4)", "precision"],
                            [[m, cell("mog_diversity", m, "modes_found", ".0f"),
                              cell("mog_diversity", m, "precision", ".2f")] for m in guidance_names()])
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time")
    ap.add_argument("--sweep-dir", type=Path, default=REPO_ROOT / "multirun" / SWEEP)
    ap.add_argument("--no-run", action="store_true", help="only the tables, from runs already made")
    ap.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "toy_claims")
    args = ap.parse_args(argv)
    t0 = time.time()
    if not args.no_run:
        rc = run_sweep(args.sweep_dir, args.jobs)
        if rc:
            print(f"the sweep exited with {rc}; tables of the runs that finished", file=sys.stderr)
    seeds = sorted(int(s) for s in load_sweep(SWEEP).grid["seed"])
    rows, missing = collect(args.sweep_dir, seeds)
    md = markdown(rows, seeds)
    data = {"command": COMMAND, "seeds": seeds, "rows": rows, **({"unfinished": missing} if missing else {})}
    write_study(args.out, data, md)
    print(md)
    print(f"{len(rows)} runs in {time.time() - t0:.0f} s")
    return 0 if not missing else 1
