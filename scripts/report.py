"""Collect a sweep directory's metrics.json files into report.csv and report.md.

    python scripts/report.py multirun/esd_lambda

Rows are the settings of the swept keys (from <sweep_dir>/sweep.yaml, else every override that
differs between runs) without the seed; each metric is shown as mean and sample std over seeds.
Unfinished runs and failed jobs are listed below the table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from src.report import write_report  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("sweep_dir", type=Path)
    args = p.parse_args(argv)
    try:
        csv_path, md_path = write_report(args.sweep_dir)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(md_path.read_text())
    print(f"report: {md_path} and {csv_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
