"""Collect a sweep directory's runs into report.md, report.csv, report.html and the figures.

    python scripts/report.py multirun/esd_lambda
    python scripts/report.py multirun/shapes_modes_toy --weights random   # evaluate first

Rows are the settings of the swept keys (from <sweep_dir>/sweep.yaml, else every override that
differs between runs) without the seed: continuous metrics as mean ± sample std over seeds,
mode_id as the class each seed reached with their distinct count and entropy, the group metrics of
<sweep_dir>/evaluation.json (`make evaluate`). With --metrics or --weights the metrics are
computed first (as scripts/evaluate.py does, without its W&B run). Failed, diverged and
unfinished runs are listed below the table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from scripts.evaluate import add_metric_args, run_evaluation  # noqa: E402
from src.studies.report import write_report  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep_dir", type=Path)
    add_metric_args(p)
    args = p.parse_args(argv)
    if args.metrics or args.weights:
        rc = run_evaluation(args)
        if rc:
            return rc
    try:
        csv_path, md_path = write_report(args.sweep_dir)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(md_path.read_text())
    print(f"report: {md_path.with_suffix('.html')} (one file, figures inline), {md_path}, {csv_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
