"""Run a declarative sweep (sweeps/<name>.yaml) as ONE Hydra multirun, then write its report.

    python scripts/sweep.py esd_lambda --launcher submitit_local --toy
    python scripts/sweep.py esd_lambda --launcher slurm_a100 hydra.launcher.partition=gpu
    python scripts/sweep.py esd_lambda --dry-run        # print the command only

Extra `key=value` arguments are Hydra overrides for every run; `hydra.*` ones (launcher
settings) pass through unchanged. Every grid point is validated before anything is recorded or
launched (all invalid points are listed). Resubmitting the same command skips finished runs and
resumes interrupted ones (same sweep dir, same run dirs).
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from src.rundir import RunDirError, RunLock  # noqa: E402
from src.studies.report import write_report  # noqa: E402
from src.sweeps import (  # noqa: E402
    LAUNCHERS,
    REPO_ROOT,
    default_sweep_dir,
    describe_invalid,
    invalid_points,
    load_sweep,
    multiruns,
    override_value,
    point_overrides,
    record_spec,
    run_dir_problems,
)

EXIT_INVALID = 2


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("sweep", help="name in sweeps/ or a path to a sweep yaml")
    p.add_argument("--launcher", default="basic", choices=LAUNCHERS)
    p.add_argument(
        "--toy", action="store_true", help="use the file's `toy:` settings (CPU, seconds)"
    )
    p.add_argument("--sweep-dir", type=Path, help="default: multirun/<name>[_toy]")
    p.add_argument("--dry-run", action="store_true", help="print the command, run nothing")
    p.add_argument(
        "--force", action="store_true", help="reuse a sweep dir launched with other fixed overrides"
    )
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides (key=value)")
    args = p.parse_intermixed_args(argv)  # overrides may come before or after the options

    try:
        sweep = load_sweep(args.sweep, toy=args.toy)
    except (FileNotFoundError, ValueError) as err:
        p.error(str(err))
    passthrough = []
    for text in args.overrides:
        key, sep, value = text.partition("=")
        if not sep:
            p.error(f"override {text!r} is not key=value")
        if key.startswith("hydra"):
            passthrough.append(text)  # launcher settings: not part of the study
        else:
            try:
                sweep.overrides[key] = override_value(text)
            except ValueError as err:
                p.error(str(err))
    sweep_dir = (args.sweep_dir or default_sweep_dir(sweep, args.toy)).resolve()
    cmds = [[sys.executable, "-m", "src.train", *a] for a in multiruns(sweep, args.launcher, sweep_dir, passthrough)]
    print(f"sweep {sweep.name}: {sweep.size} runs -> {sweep_dir}", flush=True)
    for cmd in cmds:
        print(shlex.join(cmd), flush=True)
    if args.dry_run:
        return 0

    # every grid point valid before anything is recorded or launched
    from src.api import compose

    points = point_overrides(sweep)
    bad = invalid_points(points, compose) + run_dir_problems(sweep, sweep_dir, passthrough)
    if bad:
        print(f"error: {describe_invalid(bad, points)}", file=sys.stderr)
        return EXIT_INVALID
    if sweep_dir.is_dir():  # a sweep running there holds its lock (src/hooks.py): leave sweep.yaml alone
        try:
            with RunLock(sweep_dir, "--sweep-dir"):
                pass
        except RunDirError as err:
            print(f"error: another sweep runs in this sweep directory: {err}", file=sys.stderr)
            return EXIT_INVALID
    try:
        record_spec(sweep, sweep_dir, args.launcher, force=args.force)
    except ValueError as err:
        p.error(str(err))
    t0, rc = time.time(), 0
    for cmd in cmds:  # one multirun per grid, one after the other
        code = subprocess.call(cmd, cwd=REPO_ROOT)
        rc = rc or code
        if code >= 128 or code < 0:  # stopped by a signal: launch nothing more
            break
    print(f"multirun exited with {rc} after {time.time() - t0:.0f}s", flush=True)
    try:
        csv_path, md_path = write_report(sweep_dir)
    except FileNotFoundError as err:
        print(f"no report: {err}", file=sys.stderr)
        return rc or 1
    print(md_path.read_text())
    print(f"report: {md_path} and {csv_path}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
